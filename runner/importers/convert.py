"""A :class:`Sweep` (source names) -> a :class:`Draft` of the matrix (the recipe's names).

Grid sweeps (W&B ``grid``, Hydra's basic sweeper) become ``axes``; sampled ones a ``search:``
block with the closest sampler; fixed values go to ``base``; W&B's hyperband and Oríon's
ASHA become ``pruner:``. The metric is mapped and its direction checked
(:mod:`.metrics`), keys are mapped (:mod:`.keymap`), and every conversion that is not exact
leaves a note in the file.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from runner.importers import keymap, metrics
from runner.importers._project import (
    FIDELITY_KEY,
    Recipe,
    parse_distribution,
    pruner_accepts,
    search_methods,
)
from runner.importers.model import Param, Pruner, Sweep, choice_text, hydra_value, yaml_value
from runner.importers.render import Draft, Entry, override_text

DEFAULT_TRIALS = 20
FORMAT_NAMES = {"wandb": "a W&B sweep", "orion": "an Oríon experiment", "hydra": "a Hydra multirun"}


@dataclass
class Options:
    recipe: str = "segmentation"
    base: list[str] = field(default_factory=list)
    maps: dict[str, str] = field(default_factory=dict)
    metric: str | None = None
    trials: int | None = None
    name: str | None = None
    date: str | None = None


def matrix_name(*candidates: str | None) -> str:
    for c in candidates:
        text = re.sub(r"[^a-z0-9_-]+", "_", (c or "").lower()).strip("_-")[:64]
        if text:
            return text
    return "imported"


class _Builder:
    def __init__(self, sweep: Sweep, opts: Options) -> None:
        self.sweep, self.opts = sweep, opts
        self.recipe = Recipe.load(opts.recipe)
        self.metric = metrics.resolve(sweep.metric, sweep.goal, opts.metric)
        self.d = Draft(matrix_name(opts.name, sweep.name), self.recipe.name)
        self.base = list(opts.base)
        self.d.base = [Entry("", override_text(b), trailing="--base") for b in opts.base]
        needs = self.metric.needs
        if needs and needs.split("=")[0] not in {b.split("=")[0] for b in self.base}:
            self.base.append(needs)
            self.d.base.append(Entry("", needs, trailing=f"{self.metric.name} is logged with it"))
        self.used: dict[str, str] = {}  # recipe key -> source key
        self.epochs: int | None = None  # a fixed epochs value from the source

    def warn(self, notes: list[str]) -> None:
        self.d.warnings += [n.removeprefix("! ") for n in notes if n.startswith("!")]

    def build(self) -> Draft:
        sw = self.sweep
        with keymap.Keys(self.recipe, self.base) as keys:
            maps = {
                p.key: keymap.map_key(keys, p.key, self.opts.maps)
                for p in sw.params
                if p.kind != "fidelity"
            }
            swept = {
                km.target
                for p in sw.params
                if (km := maps.get(p.key))
                and km.target in keys.groups
                and p.kind in ("grid", "dist")
            }
            for km in maps.values():
                if km.choice and km.choice[0] in swept:
                    self.d.warnings.append(
                        f"{km.source} -> {km.target} exists only for {km.choice[0]}="
                        f"{'|'.join(km.choice[1])}, and {km.choice[0]} is swept: check each"
                    )
                    km.choice = None
            chosen = keymap.pick_choices(list(maps.values()))
            extra = []
            for group, (choice, served) in chosen.items():
                extra.append(f"{group}={choice}")
                self.base.append(f"{group}={choice}")
                targets = ", ".join(maps[s].target or s for s in served)
                others = sorted(
                    {c for s in served for c in (maps[s].choice or ("", []))[1]} - {choice}
                )
                why = (
                    f"for {targets}: the default {group} "
                    f"({self.recipe.default_choices.get(group)}) lacks it"
                )
                if others:
                    why += f"; also in {', '.join(others)}"
                self.d.base.append(Entry("", f"{group}={choice}", trailing=why))
            leaves = keys.leaves(*extra) or keys.base_keys()
            for p in sw.params:
                self._place(p, maps.get(p.key), keys, leaves)
        self._search()
        self._pruner(leaves)
        self._header()
        return self.d

    # --- one parameter ----------------------------------------------------------------

    def _unmapped(self, p: Param, why: str, suggestions: list[str] | None = None) -> None:
        hint = f" (did you mean {', '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
        line = f"{p.key} = {p.source or p.dist}: {why}{hint}"
        self.d.unmapped.append(line)
        self.d.warnings.append(f"not mapped: {line}")
        value = p.dist or yaml_value(p.values if p.kind == "grid" else p.values[0])
        entry = Entry(p.key, value, [f"not mapped: {why}{hint}"], commented=True)
        if p.kind == "fixed":
            entry.value = override_text(f"{p.key}={hydra_value(p.values[0])}")
            self.d.base.append(entry)
        elif p.kind == "grid" and self.sweep.method == "grid":
            entry.value = yaml_value(p.values)
            self.d.axes.append(entry)
        else:
            self.d.space.append(entry)

    def _place(
        self, p: Param, km: keymap.KeyMap | None, keys: keymap.Keys, leaves: dict[str, Any]
    ) -> None:
        self.warn(p.notes)
        if p.kind == "fidelity":
            self.d.mapping.append(f"{p.key} -> pruner (epochs, {FIDELITY_KEY}): {p.source}")
            return
        assert km is not None
        if km.target is None:
            return self._unmapped(p, km.why, km.suggestions)
        target = km.target
        if target in self.used:
            return self._unmapped(p, f"{target} is already mapped from {self.used[target]}")
        if target == FIDELITY_KEY and self.sweep.pruner is not None:
            if p.kind != "fixed":
                return self._unmapped(p, f"the pruner sets {FIDELITY_KEY} (its max_epochs)")
            self.epochs = int(p.values[0])
            self.d.mapping.append(f"{p.key} -> pruner.max_epochs: {km.how}")
            return
        self.used[target] = p.key
        values = p.values
        if target in keys.groups:
            if p.kind == "dist":
                return self._unmapped(p, f"{target} is a config group: it takes choices")
            values = keymap.map_choices(keys, km, values)
            if km.dropped_values:
                self.d.warnings.append(
                    f"{p.key}: values {km.dropped_values} are not "
                    f"{target} choices of the recipe: left out"
                )
            if not values:
                return self._unmapped(
                    p, f"none of its values is a {target} choice ({', '.join(keys.groups[target])})"
                )
        how = km.how + (f"; in {km.choice[0]}={self._choice_of(km)}" if km.choice else "")
        if km.values:
            how += "; values " + ", ".join(f"{a} -> {b}" for a, b in km.values.items())
        self.d.mapping.append(f"{p.key} -> {target}: {how}")
        self.d.targets[p.key] = target
        if km.values:
            self.d.renamed[target] = dict(km.values)
        if km.how.startswith("~"):
            self.d.warnings.append(f"{p.key} -> {target}: {km.how.removeprefix('~ ')}")
        above = [f"{p.key}: {p.source}"] if (p.key != target or p.notes) and p.source else []
        above += p.notes
        if p.kind == "fixed" or len(values) == 1:
            text = override_text(f"{target}={hydra_value(values[0])}")
            self.d.base.append(Entry("", text, above))
            self.base.append(text)
        elif p.kind == "grid" and self.sweep.method == "grid":
            self.d.axes.append(Entry(target, yaml_value(values), above))
        else:
            dist = choice_text(values) if p.kind == "grid" else self._typed(p, target, leaves)
            self.d.space.append(Entry(target, dist, above))

    def _choice_of(self, km: keymap.KeyMap) -> str:
        group = km.choice[0] if km.choice else ""
        return next((b.split("=", 1)[1] for b in self.base if b.split("=")[0] == group), "?")

    def _typed(self, p: Param, target: str, leaves: dict[str, Any]) -> str:
        """The distribution, fitted to the recipe key's type (W&B samples integers for
        ``{min: 0, max: 1}``; the runner refuses ``uniform`` on an integer key)."""
        assert p.dist is not None
        d = parse_distribution(p.dist)
        current = leaves.get(target)
        if d.kind == "int_uniform" and isinstance(current, float):
            p.notes.append(
                f"! {p.source} samples integers; {target} is a float ({current}): wrote uniform"
            )
            self.warn(p.notes[-1:])
            return f"uniform({float(d.low)}, {float(d.high)})"
        if d.kind == "uniform" and isinstance(current, int) and not isinstance(current, bool):
            lo, hi = math.ceil(d.low), math.floor(d.high)
            if lo < hi:
                p.notes.append(f"{target} is an integer: int_uniform({lo}, {hi})")
                return f"int_uniform({lo}, {hi})"
        return p.dist

    # --- search, pruner, header -------------------------------------------------------

    def _search(self) -> None:
        if not self.d.space or all(e.commented for e in self.d.space):
            if self.sweep.metric and self.sweep.pruner is None:
                self.d.header.append(
                    f"the source's metric {self.sweep.metric}: a grid has no "
                    "objective (runner report ranks the cells)"
                )
            return
        sw, d = self.sweep, self.d
        method, why = sw.method, sw.method_note
        if method == "grid":
            method = "random"
            why = (
                "the grid's ranges can't be enumerated: sampled at random at each point of the axes"
            )
        if method not in search_methods():
            why = (why + "; " if why else "") + (
                f"the runner's model-based sampler is TPE (Optuna's TPESampler); "
                f"search.method takes {', '.join(search_methods())}"
            )
            method = "tpe"
        trials = self.opts.trials or sw.trials
        trial_note = "--trials" if self.opts.trials else ""
        if trials is None:
            trials, trial_note = DEFAULT_TRIALS, "! the source sets no budget: change it"
            self.warn([trial_note])
        d.search.append(Entry("method", method, [why] if why else []))
        d.search.append(Entry("trials", str(trials), trailing=trial_note.removeprefix("! ")))
        d.search.append(Entry("seed", str(sw.seed or 0)))
        m = self.metric
        notes = [*([sw.metric_note] if sw.metric_note else []), *m.notes]
        self.warn(m.notes)
        d.search.append(Entry("metric", m.name, notes))
        d.search.append(Entry("mode", m.mode))

    def _pruner(self, leaves: dict[str, Any]) -> None:
        pr = self.sweep.pruner
        if pr is None:
            return
        d = self.d
        notes = list(pr.notes)
        high = pr.max_epochs or self.epochs
        if high is None:
            high = int(leaves.get(FIDELITY_KEY) or 0)
            notes.append(
                f"! the source sets no maximum of epochs: {high}, the recipe's "
                f"{FIDELITY_KEY}; set your own"
            )
        low = pr.min_epochs or 1
        if low >= high:
            self.warn([f"! no pruner: its first rung ({low}) is not below max_epochs ({high})"])
            return
        eta = min(100, max(2, pr.eta))
        brackets = max(1, pr.brackets)
        while brackets > 1 and low * eta ** (brackets - 1) >= high:
            brackets -= 1
        if brackets != pr.brackets:
            notes.append(
                f"brackets {pr.brackets} -> {brackets}: bracket b starts at "
                f"min_epochs x eta^b, below max_epochs"
            )
        rungs = [low * eta**k for k in range(64) if low * eta**k < high]
        d.pruner = {
            "kind": "asha",
            "min_epochs": low,
            "max_epochs": high,
            "reduction_factor": eta,
            "brackets": brackets,
        }
        self._rungs(pr, rungs, notes)
        if not self.d.space or all(e.commented for e in self.d.space):
            d.pruner |= {"metric": self.metric.name, "mode": self.metric.mode}
            notes += self.metric.notes
            self.warn(self.metric.notes)
        every = leaves.get("training.val_interval")
        if isinstance(every, int) and any(r % every for r in rungs):
            gcd = reduce(math.gcd, rungs)
            text = f"training.val_interval={gcd}"
            d.base.append(
                Entry(
                    "",
                    text,
                    trailing=f"the rungs ({', '.join(map(str, rungs))}) are validation epochs",
                )
            )
        self.warn(notes)
        d.pruner_notes = [
            f"pruner: ASHA, rungs at epochs {', '.join(map(str, rungs))} "
            f"(min_epochs x {eta}^k), the best run to {high}",
            *notes,
        ]

    def _rungs(self, pr: Pruner, rungs: list[int], notes: list[str]) -> None:
        src = pr.source_rungs
        if not src or src == rungs:
            return
        if pruner_accepts({"rungs": src}):
            self.d.pruner = {**(self.d.pruner or {}), "rungs": src}
            notes.append(f"rungs: Oríon's own, at epochs {', '.join(map(str, src))}")
        elif pruner_accepts({"num_rungs": len(src) + 1}):
            self.d.pruner = {**(self.d.pruner or {}), "num_rungs": len(src) + 1}
        else:
            notes.append(
                f"! the source compares at epochs {', '.join(map(str, src))} "
                f"({len(src) + 1} rungs, log-spaced); the runner's rungs are "
                f"min_epochs x reduction_factor^k: {', '.join(map(str, rungs))}"
            )

    def _header(self) -> None:
        sw, d = self.sweep, self.d
        date = self.opts.date or datetime.date.today().isoformat()
        head = [
            f"Imported by `runner import` from {sw.source} ({FORMAT_NAMES[sw.format]}) on "
            f"{date}, for recipe {d.recipe}.",
            "Comments marked '!' need a look. Check with: runner plan THIS_FILE",
        ]
        if not any(b.split("=")[0] == "data" for b in self.base):
            data = self.recipe.default_choices.get("data", "?")
            head.append(
                f"Data: the recipe's default (data={data}); add yours to base "
                "(e.g. data=isles24) or import with --base data=NAME"
            )
        head += sw.notes
        self.warn(sw.notes)
        d.header = head + d.header


def convert(sweep: Sweep, opts: Options) -> Draft:
    return _Builder(sweep, opts).build()
