"""An Oríon experiment -> :class:`Sweep`: its ``space`` (prior strings such as
``uniform(5, 21, discrete=True)``), ``algorithms`` (``asha: {seed, num_rungs,
num_brackets}``), ``max_trials`` and ``name``.

Accepted as YAML/JSON (``space:`` and ``algorithms:`` at the top or under ``experiment:``),
as a Python dict literal, or as Python source holding ``create_experiment(space=...,
algorithms=...)`` (read with :mod:`ast`, never run). In source, an
``observe(trial, [{'name': 'dice', 'type': 'objective', 'value': -dice}])`` tells the metric:
Oríon minimises its objective, so a negated value means the metric is maximised.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from runner.importers import dists
from runner.importers.model import ImportProblem, Param, Pruner, Sweep

CALLS = ("create_experiment", "build_experiment", "workon")
SAMPLERS = {
    "random": "random",
    "asha": "random",
    "hyperband": "random",
    "tpe": "tpe",
    "gridsearch": "grid",
}


def looks_like(data: Any) -> bool:
    data = _merged(data) if isinstance(data, dict) else data
    return (
        isinstance(data, dict)
        and isinstance(data.get("space"), dict)
        and (
            "algorithms" in data
            or "algorithm" in data
            or all(isinstance(v, str) and "(" in v for v in data["space"].values())
        )
    )


def _merged(data: dict[str, Any]) -> dict[str, Any]:
    inner = data.get("experiment")
    return (
        {**inner, **{k: v for k, v in data.items() if k != "experiment"}}
        if isinstance(inner, dict)
        else data
    )


def _literal(node: ast.AST, source: str, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        line = getattr(node, "lineno", None)
        raise ImportProblem(
            source, f"{what} is not a literal (only literals are read)", line=line
        ) from None


def from_python(text: str, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the experiment's literal keyword arguments, what ``observe`` says of the metric)."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ImportProblem(source, f"not Python: {exc.msg}", line=exc.lineno) from None
    found: dict[str, Any] | None = None
    objective: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in CALLS and found is None:
                found = {
                    k.arg: _literal(k.value, source, f"{name}({k.arg}=...)")
                    for k in node.keywords
                    if k.arg in ("space", "algorithms", "algorithm", "max_trials", "name")
                }
            elif name == "observe":
                objective = objective or _objective(node)
    if found is None:
        # a bare dict literal: {'space': {...}, 'algorithms': {...}}
        body = tree.body[0] if len(tree.body) == 1 else None
        if isinstance(body, ast.Expr) and isinstance(body.value, ast.Dict):
            found = _literal(body.value, source, "the dict")
        else:
            raise ImportProblem(
                source,
                "no create_experiment(space=..., algorithms=...) call nor a dict literal found",
            )
    return found, objective


def _objective(call: ast.Call) -> dict[str, Any]:
    for node in ast.walk(call):
        if not isinstance(node, ast.Dict):
            continue
        entries = {
            k.value: v
            for k, v in zip(node.keys, node.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)
        }
        kind = entries.get("type")
        if isinstance(kind, ast.Constant) and kind.value == "objective":
            name = entries.get("name")
            value = entries.get("value")
            negated = isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub)
            return {
                "name": name.value if isinstance(name, ast.Constant) else None,
                "negated": negated,
                "line": node.lineno,
            }
    return {}


def parse_prior(text: str, source: str, key: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``'uniform(5, 21, discrete=True)'`` -> ('uniform', [5, 21], {'discrete': True})."""
    expr = text.strip()
    for marker in ("orion~", "~", "+"):
        expr = expr.removeprefix(marker)
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        node = None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ImportProblem(
            source,
            f"cannot read the prior {text!r}: expected name(args), e.g. loguniform(1e-4, 4e-2)",
            key=f"space.{key}",
        )
    what = f"an argument of {text!r}"
    args = [_literal(a, source, what) for a in node.args]
    kwargs = {k.arg: _literal(k.value, source, what) for k in node.keywords if k.arg}
    return node.func.id, args, kwargs


def _param(source: str, key: str, text: Any) -> Param:
    if not isinstance(text, str):
        return dists.fixed(key, text, repr(text))
    name, args, kw = parse_prior(text, source, key)
    where = f"space.{key}"
    discrete = bool(kw.pop("discrete", False))
    notes = []
    for extra in ("precision", "default_value"):
        if kw.pop(extra, None) is not None:
            notes.append(f"{extra} ignored")
    if kw.get("shape") not in (None, 1, ()):
        raise ImportProblem(
            source,
            f"shape={kw['shape']}: vector dimensions have no "
            "equivalent; search each element as its own key",
            key=where,
        )
    kw.pop("shape", None)

    def bounds(names: tuple[str, str]) -> list[Any]:
        got = args + [kw.pop(n) for n in names[len(args) :] if n in kw]
        if len(got) != 2:
            raise ImportProblem(source, f"{name}(...) takes two bounds: {text!r}", key=where)
        return got

    if name in ("uniform", "randint"):
        lo, hi = bounds(("low", "high"))
        if name == "randint":  # scipy: high excluded
            p = dists.int_uniform(source, key, lo, hi - 1, text)
        elif discrete:
            p = dists.int_uniform(source, key, lo, hi, text)
        else:
            p = dists.uniform(source, key, lo, hi, text)
    elif name in ("loguniform", "reciprocal"):
        lo, hi = bounds(("low", "high"))
        if discrete:
            p = dists.int_uniform(source, key, lo, hi, text)
            p.notes.append(
                "! an integer log-uniform is not in the runner's space: "
                "closest is int_uniform (uniform, not log)"
            )
        else:
            p = dists.log_uniform(source, key, lo, hi, text)
    elif name in ("normal", "gaussian", "norm"):
        mu, sigma = bounds(("loc", "scale"))
        p = dists.normal(source, key, mu, sigma, text)
        if discrete:
            p = dists.int_uniform(
                source, key, math.floor(mu - 2 * sigma), math.ceil(mu + 2 * sigma), text
            )
            p.notes.append("! a discrete normal: closest is int_uniform over mu +- 2 sigma")
    elif name in ("choices", "enum"):
        options = args[0] if len(args) == 1 and isinstance(args[0], (list, dict)) else args
        if isinstance(options, dict):
            p = dists.categorical(source, key, list(options), text)
            p.notes.append("! the choice probabilities dropped: the runner's choice is uniform")
        else:
            p = dists.categorical(source, key, list(options), text)
    elif name == "fidelity":
        lo, hi = bounds(("low", "high"))
        base = args[2] if len(args) > 2 else kw.pop("base", 2)
        p = Param(key, "fidelity", values=[lo, hi, base], source=text)
    else:
        raise ImportProblem(
            source,
            f"the prior {name}(...) has no equivalent; the runner "
            "samples uniform, int_uniform, loguniform and choice",
            key=where,
        )
    p.notes += notes
    return p


def _algorithm(data: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    algo = data.get("algorithms", data.get("algorithm", "random"))
    if isinstance(algo, str):
        return algo.lower(), {}
    if isinstance(algo, dict) and len(algo) == 1:
        [(name, conf)] = algo.items()
        return str(name).lower(), conf if isinstance(conf, dict) else {}
    raise ImportProblem(source, f"expected one algorithm, not {algo!r}", key="algorithms")


def read(data: Any, source: str, objective: dict[str, Any] | None = None) -> Sweep:
    if not isinstance(data, dict):
        raise ImportProblem(source, "an Oríon experiment is a mapping with `space:`")
    data = _merged(data)
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ImportProblem(source, "the experiment has no `space:` (or it is empty)", key="space")
    params = [_param(source, str(k), v) for k, v in space.items()]
    algo, conf = _algorithm(data, source)
    method = SAMPLERS.get(algo, "tpe")
    sweep = Sweep(source, "orion", [p for p in params if p.kind != "fidelity"], method=method)
    sweep.name = data.get("name")
    if algo not in SAMPLERS:
        sweep.method_note = f"Oríon's {algo} is model-based; the closest sampler is TPE"
    elif algo in ("asha", "hyperband"):
        sweep.method_note = f"Oríon's {algo} samples new trials at random"
    if conf.get("seed") is not None:
        sweep.seed = int(conf["seed"])
    if data.get("max_trials") is not None:
        sweep.trials = int(data["max_trials"])
    fidelities = [p for p in params if p.kind == "fidelity"]
    if algo in ("asha", "hyperband"):
        if len(fidelities) != 1:
            sweep.warn(
                f"! Oríon's {algo} needs one fidelity(low, high, base) dimension, the "
                f"space has {len(fidelities)}: no pruner written"
            )
        else:
            sweep.pruner = _pruner(fidelities[0], conf, algo)
            sweep.params.append(fidelities[0])
    elif fidelities:
        sweep.warn(
            f"fidelity dimension {fidelities[0].key!r} is used by ASHA/Hyperband only: not searched"
        )
    sweep.goal = "min"
    sweep.metric_note = "Oríon minimises its objective"
    if objective and objective.get("name"):
        sweep.metric = objective["name"]
        if objective.get("negated"):
            sweep.goal = "max"
            sweep.metric_note = f"Oríon minimises -{objective['name']}: maximise it"
    return sweep


def _pruner(fid: Param, conf: dict[str, Any], algo: str) -> Pruner:
    low, high, base = fid.values
    eta = int(base)
    num_rungs = conf.get("num_rungs") or int(math.log(high / low) / math.log(base) + 1)
    brackets = int(conf.get("num_brackets", 1) or 1)
    rungs = orion_budgets(low, high, base, int(num_rungs))
    p = Pruner(int(low), int(high), max(2, eta), brackets, source_rungs=rungs[:-1])
    if eta != base or eta < 2:
        p.notes.append(
            f"! fidelity base {base}: the runner's reduction factor is an integer >= 2: {p.eta}"
        )
    if conf.get("repetitions") not in (None, 1):
        p.notes.append(f"repetitions {conf['repetitions']} not imported")
    if algo == "hyperband":
        p.notes.append("Hyperband's synchronous brackets run as asynchronous halving (ASHA)")
    return p


def orion_budgets(low: float, high: float, base: float, num_rungs: int) -> list[int]:
    """The epochs of Oríon's ASHA rungs: ``num_rungs`` log-spaced from low to high."""
    if num_rungs < 2:
        return [int(high)]
    ratio = (high / low) ** (1 / (num_rungs - 1))
    out = [int(low * ratio**k + 0.5 + 1e-9) for k in range(num_rungs)]  # as Oríon rounds
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    return out
