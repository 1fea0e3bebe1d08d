"""A Hydra multirun -> :class:`Sweep`: a command line (``python train.py -m model=a,b
optimizer.lr=1e-3,3e-4 seed=range(3)``) or a config with ``hydra.sweeper`` (``params``, and
for the Optuna or Nevergrad sweepers ``n_trials``/``budget``, ``direction``, ``sampler``).

Overrides are read by Hydra's own parser (choice, range, interval, glob, tags, quoting), and
a grid is what Hydra's BasicSweeper runs: config params first, then the command line, one
list per key (a key given twice keeps its first position and its last value), in that order.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from runner.importers import dists
from runner.importers.model import ImportProblem, Param, Sweep

FLAGS_WITH_VALUE = {
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "-cd",
    "--config-dir",
    "-c",
    "--cfg",
    "-p",
    "--package",
    "--info",
    "-i",
}
FLAGS = {"-m", "--multirun", "--resolve", "-r", "--run", "--shell-completion", "-sc"}
OPTUNA_SAMPLERS = {
    "tpe": "tpe",
    "tpesampler": "tpe",
    "random": "random",
    "randomsampler": "random",
    "grid": "grid",
    "gridsampler": "grid",
    "gp": "gp",
    "gpsampler": "gp",
}
MAX_RANGE_CHOICES = 32


def looks_like(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    hydra = data.get("hydra")
    overrides = [str(d) for d in data.get("defaults") or [] if isinstance(d, (dict, str))]
    return (isinstance(hydra, dict) and "sweeper" in hydra) or any(
        "hydra/sweeper" in d for d in overrides
    )


def split_command(text: str, source: str) -> tuple[list[str], list[str]]:
    """(the overrides, notes) of a command line; ``python train.py -m`` and Hydra's flags
    are dropped."""
    try:
        tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise ImportProblem(source, f"cannot split the command line: {exc}") from None
    notes: list[str] = []
    i = 0
    if tokens and tokens[0].rsplit("/", 1)[-1].startswith("python"):
        i = 1
        if i + 1 < len(tokens) and tokens[i] == "-m" and "=" not in tokens[i + 1]:
            i += 2  # python -m package.module
    if i < len(tokens) and tokens[i].endswith(".py"):
        i += 1
    out, multirun = [], False
    while i < len(tokens):
        tok = tokens[i]
        flag = tok.split("=", 1)[0]
        if tok in FLAGS:
            multirun = multirun or tok in ("-m", "--multirun")
        elif flag in FLAGS_WITH_VALUE:
            i += 0 if "=" in tok else 1
            notes.append(f"Hydra flag {flag} ignored")
        elif tok.startswith("-") and not tok.startswith("~"):
            raise ImportProblem(source, f"{tok!r} is neither a Hydra flag nor an override")
        else:
            out.append(tok)
        i += 1
    if not out:
        raise ImportProblem(source, "no overrides in the command line: nothing to sweep")
    if not multirun:
        notes.append("no -m/--multirun: read as a multirun anyway")
    return out, notes


def parse(overrides: list[str], source: str) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            out += parser.parse_overrides([text])
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0]
            raise ImportProblem(source, f"cannot read the override {text!r}: {first}") from None
    return out


def _sweeper_settings(conf: dict[str, Any], settings: dict[str, Any]) -> None:
    for k, v in conf.items():
        if k != "params":
            settings[k] = v


def from_config(data: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(params as override strings, sweeper settings) of a config with ``hydra.sweeper``."""
    settings: dict[str, Any] = {}
    for d in data.get("defaults") or []:
        if isinstance(d, dict):
            for k, v in d.items():
                if str(k).replace("override ", "").strip() == "hydra/sweeper":
                    settings["kind"] = str(v)
                if str(k).replace("override ", "").strip() == "hydra/sweeper/sampler":
                    settings["sampler"] = str(v)
    sweeper = (data.get("hydra") or {}).get("sweeper") or {}
    _sweeper_settings(sweeper, settings)
    params = sweeper.get("params") or {}
    return [f"{k}={v}" for k, v in params.items()], settings


def _setting(ov: Any, settings: dict[str, Any], params: list[Any], notes: list[str]) -> None:
    key = ov.key_or_group
    if key == "hydra/sweeper":
        settings["kind"] = str(ov.value())
    elif key == "hydra/sweeper/sampler":
        settings["sampler"] = str(ov.value())
    elif key.startswith("hydra.sweeper.params."):
        params.append((key.removeprefix("hydra.sweeper.params."), ov))
    elif key.startswith("hydra.sweeper."):
        node = settings
        *parents, last = key.removeprefix("hydra.sweeper.").split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = ov.value()
    else:
        notes.append(f"{ov.input_line} ignored (not a sweep setting)")


def read(
    overrides: list[str],
    source: str,
    settings: dict[str, Any] | None = None,
    group_options: Callable[[str], list[str]] | None = None,
) -> Sweep:
    settings = dict(settings or {})
    notes: list[str] = []
    keyed: dict[str, Any] = {}
    for ov in parse(overrides, source):
        if ov.is_hydra_override():
            pending: list[Any] = []
            _setting(ov, settings, pending, notes)
            for k, inner in pending:
                keyed[k] = inner
        else:
            keyed[ov.get_key_element()] = ov
    kind = str(settings.get("kind", "basic")).lower()
    sweep = Sweep(source, "hydra", [], method="grid" if kind == "basic" else "tpe")
    sweep.notes += notes
    _method(sweep, kind, settings)
    for key, ov in keyed.items():
        sweep.params.append(_param(ov, key, source, sweep.method, group_options, sweep))
    if not sweep.params:
        raise ImportProblem(source, "no parameters to sweep")
    return sweep


def _method(sweep: Sweep, kind: str, settings: dict[str, Any]) -> None:
    if kind == "basic":
        return
    sampler = settings.get("sampler") or {}
    if isinstance(sampler, str):
        name, sampler = sampler, {}
    else:
        name = str(sampler.get("_target_", "tpe")).rsplit(".", 1)[-1]
    if kind == "optuna":
        sweep.method = OPTUNA_SAMPLERS.get(name.lower(), "tpe")  # type: ignore[assignment]
        if name.lower() not in OPTUNA_SAMPLERS:
            sweep.method_note = f"Optuna's {name} is not one of the runner's samplers: TPE"
        sweep.trials = settings.get("n_trials")
        seed = sampler.get("seed")
    else:
        optim = settings.get("optim") or {}
        sweep.method_note = f"Hydra's {kind} sweeper: its optimiser is not the runner's; TPE"
        sweep.trials = optim.get("budget", settings.get("n_trials"))
        seed = optim.get("seed")
    sweep.seed = int(seed) if isinstance(seed, int) else None
    direction = settings.get("direction")
    if isinstance(direction, list):
        sweep.warn(f"! multi-objective directions {direction}: only the first is imported")
        direction = direction[0] if direction else None
    if direction in ("minimize", "maximize"):
        sweep.goal = "max" if direction == "maximize" else "min"
        sweep.metric_note = f"Hydra's {kind} sweeper {direction}s what the task returns"


def _param(
    ov: Any,
    key: str,
    source: str,
    method: str,
    group_options: Callable[[str], list[str]] | None,
    sweep: Sweep,
) -> Param:
    from hydra.core.override_parser.types import Glob, IntervalSweep, RangeSweep

    written = (ov.input_line or "").partition("=")[2] or ov.get_value_element_as_str()
    name = key.lstrip("+~")
    if key.startswith("~"):
        raise ImportProblem(source, f"{ov.input_line!r}: deleting a key has no matrix equivalent")
    if not ov.is_sweep_override():
        return dists.fixed(name, ov.value(), written)
    value = ov.value()
    if isinstance(value, Glob):
        options = group_options(name) if group_options else []
        chosen = value.filter(options)
        if not chosen:
            raise ImportProblem(
                source, f"{written!r} matches none of the recipe's {name} choices", key=name
            )
        p = dists.categorical(source, name, chosen, written)
        p.notes.append(f"glob over the recipe's {name} choices")
        return p
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        if "log" in value.tags:
            p = dists.log_uniform(source, name, lo, hi, written)
        elif "int" in value.tags:
            p = dists.int_uniform(source, name, lo, hi, written)
        else:
            p = dists.uniform(source, name, lo, hi, written)
        if method == "grid":
            p.notes.append("! Hydra's basic sweeper refuses interval(): sampled at random")
        return p
    values = list(ov.sweep_iterator())
    if getattr(value, "shuffle", False):
        values = sorted(values, key=repr) if method != "grid" else values
        sweep.warn(f"shuffle() of {name}: the runner orders cells by its own ids")
    if isinstance(value, RangeSweep) and method != "grid" and len(values) > MAX_RANGE_CHOICES:
        step = value.step or 1
        if all(isinstance(v, int) for v in (value.start, value.stop, step)) and step == 1:
            return dists.int_uniform(source, name, values[0], values[-1], written)
        return dists.quantized(source, name, values[0], values[-1], step, written)
    return dists.categorical(source, name, values, written)
