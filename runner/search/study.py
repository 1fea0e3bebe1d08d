"""The Optuna side of a search, on files that are safe on NFS.

Layout, under ``<sweep_dir>/<matrix>/search/``::

    journal.log                    Optuna's JournalFileBackend: every study of the matrix,
                                   append-only, locked by symlink (no sqlite on NFS)
    studies/<key>/slots/0007.json  slot 7 of that study, once asked: its values, its trial
                                   (written once, complete, by exactly one asker: os.link)
    studies/<key>/restarts.json    the configurations chosen for restarts (written once)

and ``cells/<id>/trial.json``: the Optuna trial a cell reports to (written once, by whoever
created the trial: the sweep that claimed the cell first, or the asker).

Optuna is imported inside the functions that need it, so that planning stays fast.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.ledger import json_beside, read_json

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

    from runner.matrix.space import Space

JOURNAL = "journal.log"


def write_once(path: Path, data: dict[str, Any]) -> bool:
    """Write ``path`` complete or not at all, and only if it does not exist yet (a hard
    link is atomic and exclusive, also on NFS). False when another writer was first."""
    with json_beside(path, data) as tmp:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    return True


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage(journal: Path | str) -> BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    quiet_optuna()
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def open_study(
    journal: Path | str, name: str, mode: str, sampler: Any = None
) -> tuple[optuna.Study, BaseStorage, int]:
    """The study ``name`` in ``journal`` (created on first use; concurrent creators agree),
    its storage and its id in that storage."""
    import optuna

    store = storage(journal)
    study = optuna.create_study(
        storage=store,
        study_name=name,
        direction="maximize" if mode == "max" else "minimize",
        sampler=sampler,
        load_if_exists=True,
    )
    return study, store, store.get_study_id_from_name(name)


def trial_file(cell_dir: Path) -> Path:
    return cell_dir / "trial.json"


def slot_file(study_dir: Path, index: int) -> Path:
    return study_dir / "slots" / f"{index:04d}.json"


def read_slots(study_dir: Path) -> dict[int, dict[str, Any]]:
    """The slots asked so far (read-only: planning never writes)."""
    folder = study_dir / "slots"
    if not folder.is_dir():
        return {}
    out = {}
    for p in folder.glob("*.json"):
        if p.stem.isdigit() and (data := read_json(p)) is not None:
            out[int(p.stem)] = data
    return out


def ensure_trial(
    journal: Path,
    study: str,
    mode: str,
    cell_dir: Path,
    params: dict[str, Any],
    distributions: dict[str, Any],
    attrs: dict[str, Any],
) -> dict[str, Any]:
    """The trial of a cell whose values are fixed (a grid cell, a seeded random slot),
    created on the cell's first claim. Returns the cell's ``trial.json``."""
    found = read_json(trial_file(cell_dir))
    if found is not None:
        return found
    import optuna
    from optuna.trial import TrialState

    s, store, study_id = open_study(journal, study, mode)
    frozen = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params=params,
        distributions=distributions,
        user_attrs=attrs,
    )
    trial_id = store.create_new_trial(study_id, template_trial=frozen)
    record = {
        "study": study,
        "trial_id": trial_id,
        "number": store.get_trial_number_from_id(trial_id),
        "time": time.time(),
    }
    if not write_once(trial_file(cell_dir), record):
        # Another claimer created one first (two racing sweeps): ours is discarded.
        s.tell(record["number"], state=TrialState.FAIL)
        return read_json(trial_file(cell_dir)) or record
    return record


def sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``search.method``; the startup trials are the runner's own (seeded
    random slots), so neither waits for startup trials of its own.

    ``tpe``: TPE as a constant liar (running trials count as bad ones, so parallel asks
    spread out). ``gp``: Optuna's GPSampler, a Gaussian process (Matern 5/2, ARD) with
    log expected improvement, the closest of Optuna's samplers to W&B's ``bayes``; running
    trials enter its batch acquisition (qLogEI). Until one trial has completed it samples at
    random (seeded): a GP needs a result to fit."""
    import optuna

    if method == "gp":
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=1,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False,
        )
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, constant_liar=True)


def ask(
    journal: Path, study: str, mode: str, space: Space, seed: int, method: str = "tpe"
) -> tuple[optuna.Study, optuna.Trial, int]:
    """A new trial sampled by ``method`` (:func:`sampler`), which sees every finished (and
    every running) trial of the study; with its trial id."""
    s, store, study_id = open_study(journal, study, mode, sampler=sampler(method, seed))
    trial = s.ask(space.to_optuna())
    return s, trial, store.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def discard(s: optuna.Study, trial: optuna.Trial) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("discarded", True)
    s.tell(trial, state=TrialState.FAIL)


def trials(journal: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    """Every trial of a study, or none when the journal or the study does not exist."""
    if not Path(journal).exists():
        return []
    store = storage(journal)
    try:
        sid = store.get_study_id_from_name(study)
    except KeyError:
        return []
    return list(store.get_all_trials(sid, deepcopy=False))
