"""Read and write upstream LLaVA's partial checkpoints: ``mm_projector.bin`` and ``non_lora_trainables.bin``.

Both are plain ``torch.save`` dicts of tensors keyed like upstream (``model.mm_projector.0.weight``
...). Files are written atomically (temp file + rename) and read with ``weights_only=True``.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

MM_PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
PROJECTOR_KEYS = ("mm_projector",)


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.bin`` tensor dict safely (``weights_only=True``) onto the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def select_state(named: Iterable[tuple[str, torch.Tensor]], keys_to_match: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the tensors whose name contains any of ``keys_to_match``."""
    keys = tuple(keys_to_match)
    return {k: v.detach().cpu().clone() for k, v in named if any(m in k for m in keys)}


def strip_to(state: dict[str, torch.Tensor], marker: str) -> dict[str, torch.Tensor]:
    """Keep keys containing ``marker`` and drop everything up to and including it.

    ``model.mm_projector.0.weight`` with marker ``mm_projector.`` becomes ``0.weight``; this also
    accepts keys saved from a PEFT-wrapped model (``base_model.model.model.mm_projector...``).
    """
    return {k.split(marker, 1)[1]: v for k, v in state.items() if marker in k}


def save_mm_projector(model: nn.Module, output_dir: str | os.PathLike,
                      state: dict[str, torch.Tensor] | None = None,
                      keys_to_match: Iterable[str] = PROJECTOR_KEYS) -> Path:
    """Write ``output_dir/mm_projector.bin`` (upstream keys) and ``config.json``.

    Pass ``state`` when it was gathered already (ZeRO-3); otherwise it is taken from ``model``.
    """
    out = Path(output_dir)
    if state is None:
        state = select_state(itertools.chain(model.named_parameters(), model.named_buffers()), keys_to_match)
    atomic_torch_save(state, out / MM_PROJECTOR_FILE)
    config = getattr(model, "config", None)
    if config is not None:
        config.save_pretrained(str(out))
    return out / MM_PROJECTOR_FILE


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)``, safe when the module's params are ZeRO-3 partitioned.

    Partitioned params (they carry ``ds_id``) are gathered, loaded on rank 0 and re-partitioned,
    which avoids upstream's "size mismatch ... torch.Size([0])" errors.
    """
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                _strict_load(module, state, what)
    else:
        _strict_load(module, state, what)


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = set(module.state_dict().keys())
    got = set(state.keys())
    if expected != got:
        raise ValueError(
            f"{what}: keys do not match the model. Missing: {sorted(expected - got)}; "
            f"unexpected: {sorted(got - expected)}. Check that --mm_projector_type and the add-on flags "
            "match the run that produced these weights."
        )
    own = module.state_dict()
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"{what}: shape of {k} is {tuple(v.shape)} in the file but {tuple(own[k].shape)} in the model. "
                "Check --vision_tower, --mm_projector_type and the LLM match the run that produced it."
            )
    module.load_state_dict(state, strict=True)


def load_mm_projector(projector: nn.Module, path: str | os.PathLike) -> None:
    """Load an upstream ``mm_projector.bin`` into ``projector`` (keys stripped up to ``mm_projector.``)."""
    state = strip_to(load_weights_file(path), "mm_projector.")
    load_module_state(projector, state, f"mm_projector weights {path}")


PROJECTOR_ADDON_MODULES = ("mm_projector_norm", "mm_projector_cos")
"""Trainable add-on modules saved next to the projector in ``mm_projector.bin`` (own key prefixes)."""


def load_projector_addons(base_model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load every add-on module the model has (e.g. ``mm_projector_norm``) from a projector file.

    Returns the names loaded. A module the model has but the file lacks is an error: the file
    was trained without that flag.
    """
    state = load_weights_file(path)
    loaded = []
    for name in PROJECTOR_ADDON_MODULES:
        module = getattr(base_model, name, None)
        if module is None:
            continue
        sub = strip_to(state, f"{name}.")
        if not sub:
            raise ValueError(
                f"{path} has no weights for {name}: it was saved without the flag that creates it. "
                "Drop the flag or point --pretrain_mm_mlp_adapter at a projector trained with it."
            )
        load_module_state(module, sub, f"{name} weights {path}")
        loaded.append(name)
    return loaded
