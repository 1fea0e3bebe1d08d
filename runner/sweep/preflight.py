"""Checks and adjustments before a sweep submits anything: the executor it runs on, and
whether the recipe can read the data at all (everything that can refuse comes before
anything is written)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from runner.errors import MatrixError, RunnerError
from runner.executors.options import options_model
from runner.ledger import Ledger, read_json, registry
from runner.matrix.cv_checks import fold_problems
from runner.matrix.data_check import case_counts, data_problems
from runner.plan import Plan


def run_elsewhere(plan: Plan, kind: str, slots: int | None) -> None:
    """`--executor KIND [--slots N]`: run the matrix's cells on another executor than its
    file says (a workstation instead of the cluster). The executor is not part of a cell's
    identity, so ids, run names and the ledger stay the same."""
    fields = {"kind": kind, **({"slots": slots} if slots is not None else {})}
    model = options_model(kind)
    if slots is not None and "slots" not in model.model_fields:
        raise RunnerError(f"--slots: executor '{kind}' has no slots (its own queue decides)")
    try:
        options = model.model_validate(fields)
    except ValidationError as exc:
        missing = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise RunnerError(
            f"--executor {kind}: needs settings the command line can't give ({missing}); "
            f"set them in the matrix's executor block"
        ) from None
    spec = plan.matrix.spec.model_copy(update={"executor": options})
    plan.matrix = plan.matrix.model_copy(update={"spec": spec})


def check_data(plan: Plan, submitting: bool) -> list[str]:
    """Refuse a matrix whose data can't be read before anything is submitted (a missing file,
    an extension no installed reader opens): on a cluster that is every job failing after
    queueing. `plan` may look at a matrix without its data: a dataset it can't find at all
    (no data root here) is a warning there, an error for `sweep` and `resume`."""
    spec = plan.matrix.spec
    known = plan.expansion.data_configs
    check_folds(plan)
    problems = data_problems(plan.recipe, list(spec.base), plan.cells, known, listing=False)
    if not problems:
        unlisted = data_problems(plan.recipe, list(spec.base), plan.cells, known, listing=True)
        if not submitting:
            return [f"{problem} (`runner sweep` refuses this)" for problem in unlisted]
        problems = unlisted
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise RunnerError(f"{plan.matrix.file}: the data can't be read:\n{shown}{more}")
    return []


def check_folds(plan: Plan) -> None:
    """A ``cv`` matrix's fold counts against the subjects of each dataset it can list here
    (an error for `plan` too: no cell of such a matrix could split its data)."""
    m = plan.matrix
    if m.spec.cv is None:
        return
    counts = case_counts(plan.recipe, list(m.spec.base), plan.cells, plan.expansion.data_configs)
    problems = [p for where, n in counts for p in fold_problems(m, n, where)]
    if problems:
        raise MatrixError(m.file, problems)


#: Filesystems where sqlite's locking can't be trusted (and MLflow then fails with
#: "database is locked" under concurrent writers).
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "cephfs")


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it)."""
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and path.is_relative_to(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def _sqlite_fs(uri: str) -> str:
    db = Path(uri.removeprefix("sqlite:///"))
    return filesystem_of(db.parent if db.parent.exists() else Path.cwd())


def _networked(fs: str) -> bool:
    return fs.split(".")[-1] in NETWORK_FS or fs.startswith("fuse")


#: How a cell gets its values to the store, whatever the store (said by ``runner plan``).
SPOOL_NOTE = (
    "a write that fails is retried, then kept in the cell's spool, which `runner status`, "
    "`sweep` and `resume` upload once the cell has ended (and `runner sync` at any time)"
)


def describe_ledger(plan: Plan) -> str:
    """Where the cells' states live and why there: paths resolve against the project."""
    return (
        f"ledger: {plan.ledger.root} (sweep_dir '{plan.matrix.spec.sweep_dir}' resolved "
        f"against the matrix's project, {plan.workdir})"
    )


def describe_store(plan: Plan) -> str:
    """One line for ``runner plan``: which store this matrix's cells write to, and how."""
    uri = plan.tracking_uri
    if uri.startswith("sqlite:///"):
        fs = _sqlite_fs(uri)
        where = f"an sqlite file on {'a network filesystem, ' if _networked(fs) else ''}{fs}"
        return f"tracking: cells write to {uri} ({where}) directly; {SPOOL_NOTE}"
    if uri.startswith(("http://", "https://")):
        return f"tracking: cells write to the MLflow server {uri}; {SPOOL_NOTE}"
    return f"tracking: cells write to {uri} directly; {SPOOL_NOTE}"


def tracking_warnings(plan: Plan) -> list[str]:
    """An sqlite store written by many SLURM tasks at once: safe only on a local disk of a
    single node; on a network filesystem its locking fails. Say so, with the fix."""
    uri = plan.tracking_uri
    if plan.matrix.spec.executor.kind != "slurm" or not uri.startswith("sqlite:///"):
        return []
    fs = _sqlite_fs(uri)
    fix = (
        "the fix: run `mlflow server --backend-store-uri sqlite:////LOCAL/DISK/mlruns.db "
        "--host 0.0.0.0 --port 5000` on the submit host (its sqlite file on that host's "
        "local disk) and set tracking.uri: http://SUBMIT_HOST:5000 in the matrix (cells that "
        "can't reach it keep their metrics in their spool; `runner status` and `runner sync` "
        "upload them)"
    )
    if _networked(fs):
        return [
            f"tracking.uri {uri} is an sqlite file on {fs}: its locking is not reliable "
            f"there and concurrent SLURM tasks fail with 'database is locked' or corrupt "
            f"it; {fix}"
        ]
    return [
        f"tracking.uri {uri} is an sqlite file on this host's {fs} disk: SLURM tasks on "
        f"other nodes can't write it; for a multi-node cluster, {fix}"
    ]


def other_ledgers(plan: Plan) -> None:
    """Refuse a sweep that would train again cells already done in another ledger of the same
    matrix: one this user swept before (runner.ledger.registry), or ``sweep_dir`` under the
    working directory, where runners before 0.2 kept it."""
    name, ids = plan.matrix.spec.name, [c.id for c in plan.cells]
    candidates = registry.others(plan.ledger, name)
    sweep_dir = Path(plan.matrix.spec.sweep_dir)
    legacy = Ledger(Path.cwd() / sweep_dir, name)
    if not sweep_dir.is_absolute() and legacy.root != plan.ledger.root and legacy.root.is_dir():
        candidates.append(legacy)
    here = plan.states()
    for other in candidates:
        try:
            theirs = other.states(ids)
        except OSError:
            continue
        done = [
            cid
            for cid in ids
            if theirs[cid].state == "done"
            and here[cid].state != "done"
            and _same_cell(other, plan, cid)
        ]
        if done:
            raise RunnerError(
                f"matrix '{name}': {len(done)} of its cells are done in another ledger, "
                f"{other.root}, which this sweep does not use ({plan.ledger.root}: sweep_dir "
                f"resolved against the matrix's project, {plan.workdir}); sweeping here would "
                f"train them again. Keep that ledger: set `sweep_dir: {other.root.parent}` in "
                f"{plan.matrix.file}; or train them again here: `runner sweep "
                f"{plan.matrix.file} --ignore-other-ledgers`"
            )


def _same_cell(other: Ledger, plan: Plan, cell_id: str) -> bool:
    """Whether ``other`` ran this very cell: the same overrides on the same base (a cell id
    names the axis values; the base, a data root say, may differ between two matrices of
    one name)."""
    theirs = read_json(other.cell(cell_id).dir / "cell.json") or {}
    cell = next(c for c in plan.cells if c.id == cell_id)
    return theirs.get("base") == list(plan.matrix.spec.base) and theirs.get("overrides") == list(
        cell.overrides
    )


def executor_warnings(plan: Plan) -> list[str]:
    """What would make the executor refuse the cells now (a SLURM controller that does not
    answer), for ``plan``: a warning there, an error for ``sweep``."""
    from runner.executors.backends import backend_class

    options = plan.matrix.spec.executor
    problem = backend_class(options.kind).unreachable(options)
    return (
        [f"executor kind '{options.kind}': {problem} (`runner sweep` refuses this)"]
        if (problem)
        else []
    )
