"""What the runner knows of a recipe: its config groups, and composing its config with Hydra.

A recipe is a package under ``recipes/`` (see ``recipes/__init__.py`` for the contract).
Composition uses Hydra's compose API, so a cell's config is exactly what
``python -m recipes.<name> <overrides>`` would see.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.errors import RunnerError, did_you_mean, format_choices


def available_recipes() -> list[str]:
    """The packages under ``recipes/`` that are recipes: a ``conf/`` and a ``train`` module
    (see ``recipes/__init__.py``); shared building blocks (``components``) have neither."""
    import recipes

    root = Path(recipes.__file__).parent
    return sorted(
        p.name
        for p in root.iterdir()
        if (p / "__init__.py").is_file() and (p / "conf").is_dir() and (p / "train.py").is_file()
    )


def _search_dirs(config_dir: Path, config_name: str) -> list[Path]:
    """The primary config's directory, then those of its ``hydra.searchpath`` (a recipe may
    take groups such as ``data`` from another recipe's conf), as Hydra composes them."""
    import yaml

    dirs = [config_dir]
    try:
        primary = yaml.safe_load((config_dir / f"{config_name}.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return dirs
    for entry in (primary.get("hydra") or {}).get("searchpath") or []:
        entry = str(entry)
        if entry.startswith("pkg://"):
            spec = importlib.util.find_spec(entry.removeprefix("pkg://"))
            locations = list(spec.submodule_search_locations or []) if spec else []
            dirs += [Path(loc) for loc in locations]
        elif entry.startswith("file://"):
            path = Path(entry.removeprefix("file://"))
            dirs.append(path if path.is_absolute() else config_dir / path)
    return dirs


class UnknownRecipe(RunnerError):
    pass


@dataclass(frozen=True)
class Recipe:
    name: str
    config_dir: Path
    config_name: str
    train_entry: str

    @classmethod
    def load(cls, name: str) -> Recipe:
        choices = available_recipes()
        if name not in choices:
            raise UnknownRecipe(
                f"unknown recipe '{name}'; valid choices: "
                f"{format_choices(choices)}{did_you_mean(name, choices)}"
            )
        module = importlib.import_module(f"recipes.{name}")
        return cls(name, Path(module.CONFIG_DIR), module.CONFIG_NAME, module.TRAIN)

    @cached_property
    def search_dirs(self) -> list[Path]:
        """The directories Hydra composes this recipe's config from."""
        return _search_dirs(self.config_dir, self.config_name)

    @cached_property
    def default_choices(self) -> dict[str, str]:
        """Group -> the choice the primary config's defaults list makes (``- model: unet``)."""
        import yaml

        try:
            primary = yaml.safe_load((self.config_dir / f"{self.config_name}.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        out: dict[str, str] = {}
        for entry in (primary or {}).get("defaults") or []:
            if isinstance(entry, dict) and len(entry) == 1:
                [(group, choice)] = entry.items()
                if isinstance(choice, str) and " " not in str(group) and "/" not in str(group):
                    out[str(group)] = choice
        return out

    @cached_property
    def groups(self) -> dict[str, list[str]]:
        """Config group -> its choices (one YAML file each), over the search path."""
        found: dict[str, set[str]] = {}
        for root in self.search_dirs:
            for sub in (p for p in root.iterdir() if p.is_dir()):
                choices = {f.stem for f in sub.glob("*.yaml")}
                if choices:
                    found.setdefault(sub.name, set()).update(choices)
        return {group: sorted(found[group]) for group in sorted(found)}

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The composed config for these overrides (raises Hydra's errors as they are)."""
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        with initialize_config_dir(
            config_dir=str(self.config_dir), version_base="1.3", job_name=f"runner_{self.name}"
        ):
            return compose(config_name=self.config_name, overrides=list(overrides))

    @cached_property
    def unavailable(self) -> dict[str, dict[str, str]]:
        """Group -> choice -> why the recipe can't offer it (its ``UNAVAILABLE``)."""
        module = importlib.import_module(f"recipes.{self.name}")
        return dict(getattr(module, "UNAVAILABLE", {}) or {})

    def unknown_choice(self, group: str, value: Any) -> str:
        """Why ``value`` is no choice of ``group``: the recipe's reason, else the choices."""
        why = self.unavailable.get(group, {}).get(value) if isinstance(value, str) else None
        if why:
            return f"{group} choice {value!r} is refused: {why}"
        choices = self.groups.get(group, [])
        return (
            f"unknown {group} choice {value!r}; valid choices: "
            f"{format_choices(choices)}{did_you_mean(value, choices)}"
        )

    def train_fn(self) -> Any:
        module, _, attr = self.train_entry.partition(":")
        return getattr(importlib.import_module(module), attr)

    def entry(self, name: str) -> Any | None:
        """An optional entry of the recipe's package surface (``CHECK_DATA``, ``PREDICT``,
        ``EVALUATE``: ``"module:function"``), loaded; None when the recipe has none."""
        path = getattr(importlib.import_module(f"recipes.{self.name}"), name, None)
        if not path:
            return None
        module, _, attr = str(path).partition(":")
        return getattr(importlib.import_module(module), attr)


class Composer:
    """Compose many configs in one Hydra context (composition dominates planning time)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._cache: dict[tuple[str, ...], DictConfig | Exception] = {}

    def __enter__(self) -> Composer:
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        self._ctx = initialize_config_dir(
            config_dir=str(self.recipe.config_dir), version_base="1.3", job_name="runner_plan"
        )
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    def compose(self, overrides: Sequence[str]) -> DictConfig | Exception:
        """The config, or the exception Hydra raised, cached by overrides."""
        from hydra import compose

        key = tuple(overrides)
        if key not in self._cache:
            try:
                self._cache[key] = compose(config_name=self.recipe.config_name, overrides=list(key))
            except Exception as exc:  # Hydra raises several types; all are user errors here
                self._cache[key] = exc
        return self._cache[key]


def code_version() -> dict[str, Any]:
    """The code a cell trains with, so that cells compared later are known to have run the
    same: ``digest`` (SHA-256 of every source and config file of the ``recipes`` package:
    the recipe, the components it shares, the contract), and where git can say, ``commit``
    and ``dirty`` (uncommitted changes under ``recipes/``)."""
    import hashlib
    import subprocess

    import recipes

    root = Path(recipes.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    out: dict[str, Any] = {"digest": digest.hexdigest()[:16], "commit": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        out["commit"] = commit.strip()
        status = git("status", "--porcelain", "--", ".")
        out["dirty"] = None if status is None else bool(status.strip())
    return out
