"""Looking keys up in a composed config, and saying what is wrong with a value or with a
composition in words a matrix author can act on (not Hydra's own, which suggests ``+key``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig


def type_problem(current: Any, new: Any) -> str | None:
    """Why ``new`` can't replace ``current`` in the config, or None when it can."""
    if current is None:
        return None
    expected: tuple[type, ...]
    if isinstance(current, bool):
        expected, name = (bool,), "a boolean"
    elif isinstance(current, int):
        expected, name = (int,), "an integer"
    elif isinstance(current, float):
        expected, name = (int, float), "a number"
    elif isinstance(current, str):
        expected, name = (str,), "a string"
    elif isinstance(current, (list, ListConfig)):
        expected, name = (list,), "a list"
    elif isinstance(current, (dict, DictConfig)):
        expected, name = (dict,), "a mapping"
    else:
        return None
    if new is None:
        return None
    if isinstance(new, bool) and bool not in expected:
        return f"expected {name} (like {current!r}), got {new!r}"
    if not isinstance(new, expected):
        hint = ""
        if isinstance(new, str) and expected == (int, float):
            hint = " (quoted in the YAML?)"
        return f"expected {name} (like {current!r}), got {type(new).__name__} {new!r}{hint}"
    return None


def lookup(cfg: DictConfig, key: str) -> tuple[bool, Any, list[str]]:
    """(exists, current value, sibling keys at the deepest level reached)."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
            prefix = ".".join(parts[:i])
            return False, None, [f"{prefix}.{s}" if prefix else s for s in siblings]
        value = node._get_node(part)
        node = (
            value
            if isinstance(value, (DictConfig, ListConfig))
            else (None if value._is_missing() else value._value())
        )
    return True, node, []


def flat_keys(cfg: Any, prefix: str = "", limit: int = 5000) -> list[str]:
    """Every dotted key of ``cfg`` (mappings only), for 'did you mean' over the whole config."""
    out: list[str] = []
    if not isinstance(cfg, DictConfig):
        return out
    for k in cfg:
        key = f"{prefix}{k}"
        out.append(key)
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and len(out) < limit:
            out += flat_keys(node, key + ".", limit - len(out))
    return out[:limit]


def hydra_message(exc: Exception) -> str:
    """Hydra's message on one line, without its advice to append the key with ``+`` (for a
    typo that adds a key nothing reads)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith("To append to your config")]
    return "; ".join(kept) or type(exc).__name__
