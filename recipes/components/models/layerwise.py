"""Layer-wise learning rates: every parameter gets a role by its name, one param group each.

Roles, shallow to deep: ``early_encoder`` (the first, full-resolution encoder stage and
stem), ``deep_encoder`` (the other encoder stages), ``bottleneck`` (the lowest resolution),
``decoder`` (up-sampling path) and ``head`` (the output convolutions, deep-supervision heads
included). ``optimizer.layerwise`` gives each role a multiplier of ``optimizer.lr``: one
number, or a range ``[first, last]`` graded by depth inside the role (as the SegTHOR Novograd
study's "early encoder 0.1-0.5x, deep encoder 0.7-1.0x"). A graded role's layers (the modules
that hold its parameters, in the network's registration order, shallow to deep) get
multipliers spaced evenly from ``first`` (the shallowest) to ``last`` (the deepest), one param
group each; a role with one layer takes ``first``.

The mapping is name-based, per architecture, because MONAI's networks share no naming
scheme. Encoder stages captured by a ``(?P<stage>\\d+)`` group are resolved after all names
are seen: stage 0 is early_encoder and, for networks without an explicit bottleneck module,
the deepest stage is the bottleneck. Checkpoint wrappers (``.module``) and the SwinUNETR pad
wrapper (``net.``) are stripped first, so the mapping holds with grad checkpointing on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

ROLES = ("early_encoder", "deep_encoder", "bottleneck", "decoder", "head")
ENC = "encoder"  # resolved to early_encoder / deep_encoder / bottleneck by stage

# (pattern matched at the start of the parameter name, role); first match wins.
PATTERNS: dict[str, list[tuple[str, str]]] = {
    "segresnet": [
        (r"convInit", "early_encoder"),
        (r"down_layers\.(?P<stage>\d+)", ENC),
        (r"up_", "decoder"),
        (r"conv_final", "head"),
    ],
    "basic_unet": [
        (r"conv_0", "early_encoder"),
        (r"down_(?P<stage>\d+)", ENC),
        (r"upcat", "decoder"),
        (r"final_conv", "head"),
    ],
    "dynunet": [
        (r"input_block", "early_encoder"),
        (r"downsamples", "deep_encoder"),
        (r"bottleneck", "bottleneck"),
        (r"upsamples", "decoder"),
        (r"(output_block|deep_supervision_heads)", "head"),
    ],
    "unetr": [
        (r"(vit\.patch_embedding|encoder1\.)", "early_encoder"),
        (r"(vit\.blocks|encoder[234]\.)", "deep_encoder"),
        (r"vit\.norm", "bottleneck"),  # the ViT's last hidden state feeds decoder5
        (r"decoder", "decoder"),
        (r"out\.", "head"),
    ],
    "swin_unetr": [
        (r"(swinViT\.patch_embed|encoder1\.)", "early_encoder"),
        (r"(swinViT\.layers[123]|encoder[234]\.)", "deep_encoder"),
        (r"(swinViT\.layers4|encoder10\.)", "bottleneck"),
        (r"decoder", "decoder"),
        (r"out\.", "head"),
    ],
    "mednext": [
        (r"(stem|enc_stages\.0\.|down_blocks\.0\.)", "early_encoder"),
        (r"(enc_stages|down_blocks)", "deep_encoder"),
        (r"bottleneck", "bottleneck"),
        (r"(up_blocks|dec_stages)", "decoder"),
        (r"out_", "head"),
    ],
    "rsunet": [
        (r"encoder\.(?P<stage>\d+)", ENC),
        (r"up\.", "decoder"),
        (r"(final|head|ds_heads)", "head"),
    ],
}


def _nested_role(name: str, attention: bool) -> tuple[str, int | None]:
    """MONAI UNet / AttentionUnet nest each level as ``(down, SkipConnection(next), up)``.

    Depth = how many ``submodule`` hops; at a level, child 0 is the encoder stage. In UNet
    child 2 is the up path (the top one produces the output: head). In AttentionUnet the
    attention/upconv/merge modules are the decoder and child 2 at the top is the output conv.
    In both, the innermost ``submodule`` holds the bottom block: the bottleneck.
    """
    parts = name.split(".")
    depth = parts.count("submodule")
    last = max(i for i, p in enumerate(parts) if p in ("model", "submodule"))
    child = parts[last + 1]
    if attention and {"attention", "upconv", "merge"} & set(parts[last + 1 :]):
        return "decoder", None
    if child == "0":
        return ENC, depth
    if child == "2":
        return ("head" if depth == 0 else "decoder"), None
    if child.isdigit():  # "1": a deeper level, not reached for leaves
        return "bottleneck", None
    return "bottleneck", None  # the innermost unit: ``submodule`` holds a block, no level


def _meshnet_role(name: str, n_blocks: int) -> str:
    """No encoder/decoder: the widest-dilation block is the bottleneck, blocks before it
    encode (the first two early), blocks after it decode."""
    match = re.match(r"blocks\.(\d+)", name)
    if match is None:
        return "head"
    i, centre = int(match.group(1)), n_blocks // 2
    if i < 2:
        return "early_encoder"
    return "deep_encoder" if i < centre else "bottleneck" if i == centre else "decoder"


def _clean(name: str) -> str:
    name = name.replace(".module.", ".").removeprefix("module.")
    return name.removeprefix("net.")


def param_roles(model: nn.Module, arch: str) -> dict[str, str]:
    """``{parameter name: role}`` for every trainable parameter of ``model``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    raw: dict[str, tuple[str, int | None]] = {}
    for name in names:
        clean = _clean(name)
        if arch in ("unet", "attention_unet"):
            raw[name] = _nested_role(clean, attention=arch == "attention_unet")
        elif arch == "meshnet":
            n_blocks = len({n.split(".")[1] for n in map(_clean, names) if n.startswith("blocks.")})
            raw[name] = (_meshnet_role(clean, n_blocks), None)
        elif arch in PATTERNS:
            for pattern, role in PATTERNS[arch]:
                match = re.match(pattern, clean)
                if match:
                    stage = match.groupdict().get("stage")
                    raw[name] = (role, None if stage is None else int(stage))
                    break
            else:
                raise ValueError(f"layerwise: no role for {arch} parameter {name!r}")
        else:
            raise ValueError(f"layerwise: no role mapping for model {arch!r}")
    stages = [s for role, s in raw.values() if role == ENC and s is not None]
    has_bottleneck = any(role == "bottleneck" for role, _ in raw.values())
    deepest = max(stages, default=0)
    roles = {}
    for name, (role, stage) in raw.items():
        if role == ENC:
            stage = stage or 0
            role = (
                "early_encoder"
                if stage == min(stages)
                else "bottleneck"
                if stage == deepest and not has_bottleneck
                else "deep_encoder"
            )
        roles[name] = role
    return roles


def role_range(role: str, spec: Any) -> tuple[float, float]:
    """``(first, last)`` multipliers of a role from its ``optimizer.layerwise`` entry: a
    number (both ends) or a two-number list ``[first, last]``."""
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        ends = tuple(spec)
    elif isinstance(spec, (list, tuple)):
        raise ValueError(
            f"optimizer.layerwise.{role}: a range is [first, last] (two numbers), got {list(spec)}"
        )
    else:
        ends = (spec, spec)
    out = []
    for end in ends:
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not end > 0:
            raise ValueError(
                f"optimizer.layerwise.{role}: multipliers are positive numbers (one, or "
                f"[first, last] graded by depth), got {spec!r}"
            )
        out.append(float(end))
    return out[0], out[1]


def _layers(names: list[str]) -> list[str]:
    """The modules holding these parameters, in order of first appearance (registration
    order: shallow to deep in every supported network)."""
    return list(dict.fromkeys(name.rpartition(".")[0] for name in names))


def layerwise_param_groups(
    model: nn.Module, arch: str, lr: float, multipliers: Mapping[str, Any]
) -> list[dict]:
    """Param groups at ``lr * multiplier``: one per role present in the model, or, for a role
    given a range, one per layer of that role (module doc).

    Groups carry their ``role``, a ``name`` (the role, or ``<role>.<k>`` for the k-th layer of
    a graded role) and their multiplier ``lr_scale``, so that logs and tests can tell them
    apart.
    """
    unknown = set(multipliers) - set(ROLES)
    if unknown:
        raise ValueError(f"optimizer.layerwise: unknown roles {sorted(unknown)}; use {ROLES}")
    roles = param_roles(model, arch)
    params = dict(model.named_parameters())
    groups = []
    for role in ROLES:
        names = [n for n, r in roles.items() if r == role]
        if not names:
            continue
        first, last = role_range(role, multipliers.get(role, 1.0))
        if first == last:
            groups.append(_group([params[n] for n in names], lr, first, role, role))
            continue
        layers = _layers(names)
        for k, layer in enumerate(layers):
            scale = first + (last - first) * k / max(1, len(layers) - 1)
            members = [params[n] for n in names if n.rpartition(".")[0] == layer]
            groups.append(_group(members, lr, scale, role, f"{role}.{k}"))
    return groups


def _group(members: list[nn.Parameter], lr: float, scale: float, role: str, name: str) -> dict:
    return {"params": members, "lr": lr * scale, "role": role, "name": name, "lr_scale": scale}
