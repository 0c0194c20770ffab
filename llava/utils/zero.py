"""ZeRO-3-safe helpers that copy (possibly partitioned) parameters to full CPU tensors.

Under DeepSpeed ZeRO-3 each rank holds only a shard of every parameter (the local tensor has
size 0); reading it needs a collective gather that *every* rank must enter. These helpers
gather when a parameter is partitioned and simply detach/copy otherwise, so callers can use
them unconditionally (plain PyTorch, ZeRO-2, ZeRO-3). Call them on all ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)


def _is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def maybe_zero_3(param: torch.Tensor, ignore_status: bool = False, name: str | None = None) -> torch.Tensor:
    """Return a detached full CPU copy of ``param``, gathering it first if ZeRO-3 partitioned it."""
    if not _is_partitioned(param):
        return param.detach().cpu().clone()
    from deepspeed import zero
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if param.ds_status == ZeroParamStatus.NOT_AVAILABLE and not ignore_status:
        logger.debug("gathering ZeRO-3 partitioned parameter %s", name or "<unnamed>")
    with zero.GatheredParameters([param]):
        return param.data.detach().cpu().clone()


def gather_named(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full CPU copies of (name, tensor) pairs, ZeRO-3 partitioned ones gathered in one collective."""
    items = list(named)
    partitioned = [p for _, p in items if _is_partitioned(p)]
    if not partitioned:
        return {k: p.detach().cpu().clone() for k, p in items}
    from deepspeed import zero

    with zero.GatheredParameters(partitioned):
        return {k: p.data.detach().cpu().clone() for k, p in items}


def get_peft_state_maybe_zero_3(
    named_params: Iterable[tuple[str, torch.Tensor]], bias: str
) -> dict[str, torch.Tensor]:
    """LoRA weights (and biases per ``bias``: 'none', 'all' or 'lora_only') as full CPU tensors."""
    named = list(named_params)
    if bias == "none":
        picked = [(k, t) for k, t in named if "lora_" in k]
    elif bias == "all":
        picked = [(k, t) for k, t in named if "lora_" in k or "bias" in k]
    elif bias == "lora_only":
        lora_modules = {k.split("lora_")[0] for k, _ in named if "lora_" in k}
        picked = [(k, t) for k, t in named
                  if "lora_" in k or ("bias" in k and k.rsplit("bias", 1)[0] in lora_modules)]
    else:
        raise ValueError(f"lora_bias {bias!r} is not supported; valid values: none, all, lora_only")
    return gather_named(picked)


def get_peft_state_non_lora_maybe_zero_3(
    named_params: Iterable[tuple[str, torch.Tensor]], require_grad_only: bool = True
) -> dict[str, torch.Tensor]:
    """Every non-LoRA parameter (by default only trainable ones, e.g. the projector) as full CPU tensors."""
    picked = [(k, t) for k, t in named_params
              if "lora_" not in k and (t.requires_grad or not require_grad_only)]
    return gather_named(picked)
