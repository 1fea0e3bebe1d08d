"""A W&B sweep configuration (YAML or JSON) -> :class:`Sweep`.

Reads ``method`` (grid | random | bayes), ``metric: {name, goal}``, ``parameters`` (``values``,
``value``, ``min``/``max`` with or without ``distribution``, nested ``parameters``),
``run_cap`` and ``early_terminate: {type: hyperband, min_iter | max_iter, eta, s}``. A
configuration wrapped in ``sweep:`` (as some repositories keep it) is unwrapped; a bare list
(``model.loss_weights: [[...], ...]``) reads as ``values``, and ``log: true`` (not a W&B key)
as ``distribution: log_uniform_values``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from runner.importers import dists
from runner.importers.model import ImportProblem, Param, Pruner, Sweep

METHODS = {"grid": "grid", "random": "random", "bayes": "gp"}
SWEEP_KEYS = {
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "name",
    "description",
    "program",
    "command",
    "project",
    "entity",
    "controller",
}


def looks_like(data: Any) -> bool:
    data = _unwrap(data)
    return (
        isinstance(data, dict)
        and "parameters" in data
        and ("method" in data or isinstance(data.get("parameters"), dict))
    )


def _unwrap(data: Any) -> Any:
    if isinstance(data, dict) and set(data) == {"sweep"} and isinstance(data["sweep"], dict):
        return data["sweep"]
    return data


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``parameters: {model: {parameters: {dropout: ...}}}`` -> ``model.dropout``."""
    out: dict[str, Any] = {}
    for k, spec in params.items():
        key = f"{prefix}{k}"
        if isinstance(spec, dict) and isinstance(spec.get("parameters"), dict):
            out.update(_flatten(spec["parameters"], key + "."))
        else:
            out[key] = spec
    return out


def _written(spec: Any) -> str:
    return json.dumps(spec, separators=(", ", ": ")).replace('"', "")


def _param(source: str, key: str, spec: Any) -> Param:
    w = _written(spec)
    if isinstance(spec, list):
        p = dists.categorical(source, key, spec, w)
        p.notes.append("a bare list read as `values:`")
        return p
    if not isinstance(spec, dict):
        return dists.fixed(key, spec, w)
    kind = spec.get("distribution")
    if "value" in spec and kind in (None, "constant"):
        return dists.fixed(key, spec["value"], w)
    if "values" in spec and kind in (None, "categorical", "categorical_w_probabilities"):
        p = dists.categorical(source, key, spec["values"], w)
        if "probabilities" in spec:
            p.notes.append("! probabilities dropped: the runner's choice is uniform")
        return p
    lo, hi = spec.get("min"), spec.get("max")
    if kind is None:
        if lo is None or hi is None:
            raise ImportProblem(
                source, f"expected values, value or min and max, not {w}", key=f"parameters.{key}"
            )
        if spec.get("log") is True:
            p = dists.log_uniform(source, key, lo, hi, w)
            p.notes.append("`log: true` is not a W&B key: read as log_uniform_values")
            return p
        both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
        kind = "int_uniform" if both_int else "uniform"
    return _distribution(source, key, kind, spec, w)


def _distribution(source: str, key: str, kind: str, spec: dict[str, Any], w: str) -> Param:
    lo, hi, q = spec.get("min"), spec.get("max"), spec.get("q", 1)
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
    where = f"parameters.{key}"
    if kind == "uniform":
        return dists.uniform(source, key, lo, hi, w)
    if kind == "int_uniform":
        return dists.int_uniform(source, key, lo, hi, w)
    if kind == "q_uniform":
        return dists.quantized(source, key, lo, hi, q, w)
    if kind in ("log_uniform_values", "inv_log_uniform_values"):
        p = dists.log_uniform(source, key, lo, hi, w)
    elif kind in ("log_uniform", "inv_log_uniform"):  # bounds are natural logs
        dists._finite(source, where, lo, hi)
        p = dists.log_uniform(source, key, math.exp(lo), math.exp(hi), w)
        p.notes.append(f"W&B's {kind} takes log bounds: e^{lo} .. e^{hi}")
    elif kind in ("q_log_uniform", "q_log_uniform_values"):
        if kind == "q_log_uniform":
            dists._finite(source, where, lo, hi)
            lo, hi = math.exp(lo), math.exp(hi)
        p = dists.quantized(source, key, lo, hi, q, w, log=True)
    elif kind in ("normal", "q_normal", "log_normal", "q_log_normal"):
        return dists.normal(source, key, mu, sigma, w, log="log" in kind)
    elif kind in ("beta", "q_beta"):
        p = dists.uniform(source, key, 0.0, 1.0, w)
        p.notes.append(f"! {kind} is not a distribution Optuna samples: closest is uniform(0, 1)")
        return p
    else:
        raise ImportProblem(source, f"unknown W&B distribution {kind!r}", key=where)
    if kind.startswith("inv_"):
        p.notes.append(f"! {kind} (1/x log-uniform) sampled as log-uniform over the same range")
    return p


def _pruner(source: str, et: Any, sweep: Sweep) -> Pruner | None:
    if not isinstance(et, dict):
        raise ImportProblem(source, "expected {type: hyperband, ...}", key="early_terminate")
    if et.get("type") != "hyperband":
        raise ImportProblem(
            source,
            f"unknown type {et.get('type')!r}; W&B has hyperband",
            key="early_terminate.type",
        )
    eta = int(et.get("eta", 3))
    brackets = int(et.get("s", 1) or 1)
    notes = [
        "W&B's hyperband counts iterations of the logged metric: read as epochs "
        "(validate every epoch, or choose training.val_interval so rungs are validations)"
    ]
    if "min_iter" in et:
        low = int(et["min_iter"])
    elif "max_iter" in et:
        # W&B: brackets at max_iter / eta^k, k = 1..s; the lowest is the first rung
        low = max(1, int(et["max_iter"]) // eta ** max(1, brackets))
        notes.append(f"min_epochs = max_iter {et['max_iter']} / eta^s")
    else:
        raise ImportProblem(source, "hyperband needs min_iter or max_iter", key="early_terminate")
    high = int(et["max_iter"]) if "max_iter" in et else None
    if et.get("strict"):
        notes.append("`strict` has no equivalent: the runner's ASHA always compares at rungs")
    return Pruner(low, high, eta, brackets, notes=notes)


def read(data: Any, source: str) -> Sweep:
    data = _unwrap(data)
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise ImportProblem(source, "a W&B sweep needs a `parameters:` mapping")
    if not data["parameters"]:
        raise ImportProblem(source, "the sweep has no parameters", key="parameters")
    method = data.get("method", "grid")
    if method not in METHODS:
        raise ImportProblem(
            source, f"unknown method {method!r}; W&B's: grid, random, bayes", key="method"
        )
    params = [_param(source, k, s) for k, s in _flatten(data["parameters"]).items()]
    sweep = Sweep(source, "wandb", params, method=METHODS[method], name=data.get("name"))
    if method == "bayes":
        sweep.method_note = "W&B's bayes fits a Gaussian process"
    metric = data.get("metric")
    if isinstance(metric, dict):
        sweep.metric = metric.get("name")
        goal = metric.get("goal", "minimize")
        if goal not in ("minimize", "maximize"):
            raise ImportProblem(source, f"goal {goal!r}: minimize or maximize", key="metric.goal")
        sweep.goal = "max" if goal == "maximize" else "min"
        if "goal" not in metric:
            sweep.metric_note = "W&B's default goal: minimize"
        if "target" in metric:
            sweep.warn(
                f"metric.target {metric['target']} has no equivalent (the search runs its trials)"
            )
    if "run_cap" in data:
        sweep.trials = int(data["run_cap"])
    if "early_terminate" in data:
        sweep.pruner = _pruner(source, data["early_terminate"], sweep)
    for k in sorted(set(data) - SWEEP_KEYS):
        sweep.warn(f"W&B key {k!r} not imported")
    return sweep
