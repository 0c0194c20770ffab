"""Read and write upstream LLaVA's partial checkpoints: ``mm_projector.bin`` and ``non_lora_trainables.bin``.

Both are plain ``torch.save`` dicts of tensors keyed like upstream (``model.mm_projector.0.weight``
...). Files are written atomically (temp file + rename) and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from llava.utils.atomic import atomic_torch_save

MM_PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.bin`` tensor dict safely (``weights_only=True``) onto the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def projector_tensors(model: nn.Module, with_embeddings: bool = False) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of everything ``mm_projector.bin`` holds, named as in ``model``'s state dict.

    Membership comes from the model itself (``projector_modules()``: the projector and the add-on
    modules the registry says travel with it), by object identity, never from parameter names;
    ``with_embeddings`` adds the input embeddings (upstream's projector file with ``mm_use_im_start_end``).
    """
    base = model.get_model()
    keep = {id(t) for m in base.projector_modules() for t in m.state_dict(keep_vars=True).values()}
    if with_embeddings:
        keep.add(id(model.get_input_embeddings().weight))
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [(k, t) for k, t in named if id(t) in keep]


def strip_to(state: dict[str, torch.Tensor], marker: str) -> dict[str, torch.Tensor]:
    """Keep keys containing ``marker`` and drop everything up to and including it.

    ``model.mm_projector.0.weight`` with marker ``mm_projector.`` becomes ``0.weight``; this also
    accepts keys saved from a PEFT-wrapped model (``base_model.model.model.mm_projector...``).
    """
    return {k.split(marker, 1)[1]: v for k, v in state.items() if marker in k}


def save_mm_projector(model: nn.Module, output_dir: str | os.PathLike,
                      state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``output_dir/mm_projector.bin`` (upstream keys) and ``config.json``.

    Pass ``state`` when it was gathered already (ZeRO-3); otherwise it is taken from ``model``.
    """
    out = Path(output_dir)
    if state is None:
        state = {k: v.detach().cpu().clone() for k, v in projector_tensors(model)}
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


def load_mm_projector(projector: nn.Module, path: str | os.PathLike,
                      state: dict[str, torch.Tensor] | None = None) -> None:
    """Load an upstream ``mm_projector.bin`` into ``projector`` (keys stripped up to ``mm_projector.``).

    ``state``: the file's tensors when already read (e.g. mapped from the reference layout).
    """
    state = strip_to(load_weights_file(path) if state is None else state, "mm_projector.")
    load_module_state(projector, state, f"mm_projector weights {path}")


def load_projector_addons(base_model: nn.Module, path: str | os.PathLike,
                          state: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Load every add-on module that travels with the projector (e.g. ``mm_projector_norm``) from a file.

    Returns the attribute names loaded. A module the model has but the file lacks is an error:
    the file was trained without the flag that creates it.
    """
    state = load_weights_file(path) if state is None else state
    loaded = []
    for name, module in base_model.addon_pipeline().module_states(base_model):
        sub = strip_to(state, f"{name}.")
        if not sub:
            raise ValueError(
                f"{path} has no weights for {name}: it was saved without the flag that creates it. "
                "Drop the flag or point --pretrain_mm_mlp_adapter at a projector trained with it."
            )
        load_module_state(module, sub, f"{name} weights {path}")
        loaded.append(name)
    return loaded
