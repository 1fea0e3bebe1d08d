"""Source keys -> the recipe's keys, with a reason for each and suggestions for the rest.

In order: the user's ``--map FROM=TO``; the key itself, when the recipe's config (composed
with the base) has it; a built-in table of names other tools use (``lr``,
``optimization.optimizer.lr``, ``channels``, ``model.loss_weights``...), whose candidates are
tried in the base config and then in each choice of their config group (``model.width`` is
MeshNet's: the matrix then picks ``model=meshnet`` in ``base``); the key itself in a group
choice; the key's last parts (``system.training.batch_size`` -> ``training.batch_size``);
a unique key with the same last name. Anything else is unmapped, with "did you mean"
suggestions from the recipe's keys, and is listed, never dropped.

When several keys need a choice of the same group, the choice that has the most of them
wins, then the shortest name (``unet`` over ``attention_unet``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.importers._project import Composer, Recipe
from runner.importers.model import ImportProblem

#: other tools' names -> the segmentation recipe's keys, best first
TABLE: dict[str, list[str]] = {
    "lr": ["optimizer.lr"],
    "learning_rate": ["optimizer.lr"],
    "max_lr": ["optimizer.lr"],
    "optimizer.lr": ["optimizer.lr"],
    "optimizer.learning_rate": ["optimizer.lr"],
    "weight_decay": ["optimizer.weight_decay"],
    "wd": ["optimizer.weight_decay"],
    "momentum": ["optimizer.momentum"],
    "eps": ["optimizer.eps"],
    "channels": ["model.width"],
    "width": ["model.width"],
    "dropout": ["model.dropout", "model.dropout_prob", "model.dropout_rate"],
    "dropout_rate": ["model.dropout_rate", "model.dropout", "model.dropout_prob"],
    "dropout_prob": ["model.dropout_prob", "model.dropout", "model.dropout_rate"],
    "loss_weights": ["loss.weights"],
    "bg_weight": ["loss.background_weight"],
    "background_weight": ["loss.background_weight"],
    "label_smoothing": ["loss.label_smoothing"],
    "warmup_pct": ["scheduler.pct_start"],
    "pct_start": ["scheduler.pct_start"],
    "warmup_fraction": ["scheduler.warmup_fraction"],
    "batch_size": ["training.batch_size"],
    "patch_size": ["training.patch_size"],
    "epochs": ["training.max_epochs"],
    "num_epochs": ["training.max_epochs"],
    "n_epochs": ["training.max_epochs"],
    "max_epochs": ["training.max_epochs"],
    "gradient_clip_val": ["training.grad_clip_norm"],
    "grad_clip": ["training.grad_clip_norm"],
    "fold": ["data.fold"],
    "architecture": ["model"],
    "arch": ["model"],
    "model.architecture": ["model"],
    "model.name": ["model"],
    "optimizer.name": ["optimizer"],
    "scheduler.name": ["scheduler"],
    "lr_scheduler": ["scheduler"],
    "loss.name": ["loss"],
    "seed": ["seed"],
}
#: other tools' names of config-group choices -> the recipe's
CHOICES: dict[str, str] = {
    "monai_unet": "unet",
    "monai_basic_unet3d": "basic_unet",
    "basic_unet3d": "basic_unet",
    "reducelronplateau": "plateau",
    "onecyclelr": "onecycle",
    "cosineannealinglr": "warmup_cosine",
}


@dataclass
class KeyMap:
    """Where one source key went. ``target`` None: unmapped (``why``, ``suggestions``)."""

    source: str
    target: str | None
    how: str = ""
    choice: tuple[str, list[str]] | None = None  # (group, choices that have the key)
    why: str = ""
    suggestions: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # group choice renames
    dropped_values: list[Any] = field(default_factory=list)


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out[key] = v
            _flatten(v, key + ".", out)


class Keys:
    """The recipe's keys, composed with the base overrides (and, on demand, one group choice)."""

    def __init__(self, recipe: Recipe, base: Sequence[str]) -> None:
        self.recipe = recipe
        self.groups = recipe.groups
        self.base = list(base)
        self._composer = Composer(recipe)
        self._cache: dict[tuple[str, ...], dict[str, Any] | None] = {}
        self.errors: dict[tuple[str, ...], Exception] = {}
        self.fixed = {
            o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in self.base if "=" in o
        }

    def __enter__(self) -> Keys:
        self._composer.__enter__()
        if self.leaves() is None:
            self._composer.__exit__(None, None, None)
            exc = self.errors[tuple(self.base)]
            first = " ".join(str(exc).split("Config search path")[0].split())
            first = first or type(exc).__name__
            raise ImportProblem(
                "--base",
                f"the {self.recipe.name} recipe's config does not compose with "
                f"{' '.join(self.base)}: {first[:300]}",
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._composer.__exit__(*exc)

    def leaves(self, *extra: str) -> dict[str, Any] | None:
        key = (*self.base, *extra)
        if key not in self._cache:
            cfg = self._composer.compose(list(key))
            flat: dict[str, Any] = {}
            if isinstance(cfg, DictConfig):
                _flatten(OmegaConf.to_container(cfg, resolve=False), "", flat)
                self._cache[key] = flat
            else:
                self._cache[key] = None
                self.errors[key] = cfg
        return self._cache[key]

    def base_keys(self) -> dict[str, Any]:
        return self.leaves() or {}

    def has(self, key: str) -> bool:
        return key in self.groups or key in self.base_keys()

    def choices_with(self, key: str) -> list[str]:
        """The choices of ``key``'s group whose config has ``key`` (none if the base fixes
        that group, or the key's head is not a group)."""
        group = key.split(".")[0]
        if group not in self.groups or group in self.fixed or "." not in key:
            return []
        return [c for c in self.groups[group] if key in (self.leaves(f"{group}={c}") or {})]

    def all_keys(self, group: str | None = None) -> list[str]:
        keys = set(self.base_keys())
        if group in self.groups and group not in self.fixed:
            for c in self.groups[group]:
                keys |= set(self.leaves(f"{group}={c}") or {})
        return sorted(keys)


def _candidates(key: str) -> list[str]:
    """Table entries for the key and for its shorter suffixes (the longest first)."""
    parts = key.lower().split(".")
    for i in range(len(parts)):
        found = TABLE.get(".".join(parts[i:]))
        if found:
            return found
    return []


def suggest(keys: Keys, key: str) -> list[str]:
    universe = keys.all_keys(key.split(".")[0])
    out = difflib.get_close_matches(key, universe, n=3, cutoff=0.6)
    last = key.split(".")[-1]
    by_last: dict[str, list[str]] = {}
    for k in universe:
        by_last.setdefault(k.split(".")[-1], []).append(k)
    for name in difflib.get_close_matches(last, list(by_last), n=3, cutoff=0.6):
        out += [k for k in by_last[name] if k not in out][:2]
    return out[:5]


def map_key(keys: Keys, key: str, user: dict[str, str]) -> KeyMap:
    if key in user:
        target = user[key]
        if keys.has(target):
            return KeyMap(key, target, "--map")
        choices = keys.choices_with(target)
        if choices:
            return KeyMap(key, target, "--map", choice=(target.split(".")[0], choices))
        return KeyMap(
            key,
            None,
            why=f"--map target {target!r} is not a key of the recipe",
            suggestions=suggest(keys, target),
        )
    if keys.has(key) and not _is_group_name(keys, key):
        return KeyMap(key, key, "same key")
    group_name = _is_group_name(keys, key)
    if group_name:
        return KeyMap(key, group_name, "config group")
    for target in _candidates(key):
        if keys.has(target):
            return KeyMap(key, target, "built-in table")
        choices = keys.choices_with(target)
        if choices:
            return KeyMap(key, target, "built-in table", choice=(target.split(".")[0], choices))
    choices = keys.choices_with(key)
    if choices:
        return KeyMap(key, key, "same key", choice=(key.split(".")[0], choices))
    parts = key.split(".")
    for i in range(1, len(parts) - 1):
        tail = ".".join(parts[i:])
        if keys.has(tail):
            return KeyMap(key, tail, f"its last parts ({tail})")
    same_last = [k for k in keys.base_keys() if k.split(".")[-1] == parts[-1] and "." in k]
    if len(same_last) == 1:
        return KeyMap(key, same_last[0], "~ the only key with the same last name: check it")
    why = "no such key in the recipe's config"
    if len(same_last) > 1:
        why = f"ambiguous: {', '.join(sorted(same_last))} all end in '{parts[-1]}'"
    return KeyMap(key, None, why=why, suggestions=suggest(keys, key))


def _is_group_name(keys: Keys, key: str) -> str | None:
    """``model`` or ``model.name``: the config group itself (its values are choices)."""
    if key in keys.groups:
        return key
    head, _, rest = key.partition(".")
    return head if head in keys.groups and rest == "name" else None


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def map_choices(keys: Keys, km: KeyMap, values: Iterable[Any]) -> list[Any]:
    """The source's choices of a config group, as the recipe's choice names."""
    assert km.target is not None
    valid = keys.groups[km.target]
    by_norm = {norm(c): c for c in valid}
    out = []
    for v in values:
        text = str(v)
        name = text if text in valid else CHOICES.get(text.lower()) or by_norm.get(norm(text))
        if name is None:
            close = difflib.get_close_matches(text.lower(), valid, n=1, cutoff=0.75)
            name = close[0] if close else None
        if name is None:
            km.dropped_values.append(v)
            continue
        if name != text:
            km.values[text] = name
        if name not in out:
            out.append(name)
    return out


def pick_choices(maps: list[KeyMap]) -> dict[str, tuple[str, list[str]]]:
    """Group -> (the chosen choice, the source keys it serves); unserved keys are unmapped."""
    need: dict[str, list[KeyMap]] = {}
    for km in maps:
        if km.target is not None and km.choice is not None:
            need.setdefault(km.choice[0], []).append(km)
    out: dict[str, tuple[str, list[str]]] = {}
    for group, kms in need.items():
        counts: dict[str, int] = {}
        for km in kms:
            for c in km.choice[1] if km.choice else []:
                counts[c] = counts.get(c, 0) + 1
        best = sorted(counts, key=lambda c: (-counts[c], len(c), c))[0]
        served = []
        for km in kms:
            if km.choice and best in km.choice[1]:
                served.append(km.source)
            else:
                km.why = (
                    f"needs {group}={'|'.join(km.choice[1]) if km.choice else '?'}, "
                    f"but {group}={best} serves more keys"
                )
                km.target = None
        out[group] = (best, served)
    return out
