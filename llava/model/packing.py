"""Model side of packed training: several samples share one row, each attending only to itself.

A packed batch carries ``packed_seq_ids`` (B, L): 0 on padding, ``k >= 1`` on the tokens of the
k-th sample of the row (samples are contiguous). After the image splice the same ids mark every
output position (an image block takes its placeholder's id). From them:

* position ids restart at 0 on each sample's first token (done inside the splice, both streams
  under 2D RoPE; :func:`segment_positions` for a row without images);
* labels on each sample's first position are ignored (:func:`mask_first_labels`), so a sample's
  first token is never the target of the previous sample's last one;
* attention is block-diagonal causal (:func:`packed_attention`): ``flash_attention_2``/``_3`` get
  cumulative sequence lengths over the flattened batch (varlen kernels; the 2D mask is all True,
  :func:`no_padding_mask`, so transformers never infers samples from the position ids);
  :data:`PACKED_SDPA` (what training uses for ``sdpa`` with ``--packing``) the same lengths, and
  runs SDPA once per sample (causal, no mask: only the diagonal blocks are computed);
  ``sdpa``/``eager`` a 4D mask (boolean / additive) that transformers passes through unchanged and
  that costs the full L x L; ``flex_attention`` a ``BlockMask`` (its kernels skip the blocks
  between samples; no backward on CPU in torch 2.13). Padding forms a block of its own, so no
  query row is fully masked.

:data:`PACKED_SDPA` is registered with transformers' public ``AttentionInterface`` (and its mask
function is sdpa's) when this module is imported; without packed ids it is exactly ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch

from llava.constants import IGNORE_INDEX

PACKED_SDPA = "llava_packed_sdpa"
MASK_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")
VARLEN_PREFIX = "flash_attention"
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def check_packing_implementation(implementation: str | None) -> None:
    """Raise ``ValueError`` when packed rows cannot be expressed for this attention implementation."""
    impl = implementation or "eager"
    if impl in MASK_IMPLEMENTATIONS or impl == PACKED_SDPA or impl.startswith(VARLEN_PREFIX):
        return
    raise ValueError(
        f"--packing True needs attention that can be told where samples end; attn_implementation {impl!r} is "
        f"not one of {', '.join(MASK_IMPLEMENTATIONS)}, flash_attention_2/3; pass --attn_implementation with one "
        "of those or train without --packing")


def runs_per_sample(implementation: str | None) -> bool:
    """True when packed attention costs only each sample's own block (so a row's length is free)."""
    impl = implementation or "eager"
    return impl == PACKED_SDPA or impl.startswith(VARLEN_PREFIX)


def sample_starts(segments: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True on the first position of every sample (never on padding)."""
    prev = torch.nn.functional.pad(segments[:, :-1], (1, 0), value=-1)
    return (segments != prev) & (segments > 0)


def mask_first_labels(labels: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``labels`` with each sample's first position set to ``IGNORE_INDEX`` (a new tensor)."""
    return labels.masked_fill(sample_starts(segments), IGNORE_INDEX)


def segment_keys(segments: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(flat (B * L) index of each position's (row, sample) pair, ids per row): for scatter/gather per sample."""
    n_seg = int(segments.max()) + 1 if segments.numel() else 1
    rows = torch.arange(segments.shape[0], device=segments.device).unsqueeze(1)
    return (rows * n_seg + segments).reshape(-1), n_seg


def restart_per_segment(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Subtract from a row-wise nondecreasing (B, L) ``values`` its value at each segment's first position."""
    bsz, length = segments.shape
    key, n_seg = segment_keys(segments)
    big = torch.iinfo(values.dtype).max
    first = torch.full((bsz * n_seg,), big, dtype=values.dtype, device=values.device)
    first = first.scatter_reduce(0, key, values.reshape(-1), reduce="amin")
    return values - first[key].view(bsz, length)


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, L) position ids counting from 0 within each sample (padding: 0), for rows without images."""
    ar = torch.arange(segments.shape[1], device=segments.device).expand_as(segments).contiguous()
    return restart_per_segment(ar, segments).masked_fill(segments == 0, 0)


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True where query i may attend key j: same sample (or both padding) and j <= i."""
    length = segments.shape[1]
    same = segments.unsqueeze(2) == segments.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    return (same & causal).unsqueeze(1)


def no_padding_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, L) all-True 2D mask for the implementations that get the sample boundaries as ``cu_seq_lens``.

    transformers' mask builder (``masking_utils._preprocess_mask_arguments``) infers packed samples
    from ``position_ids`` whenever the 2D mask is ``None`` and there is no cache (training:
    ``use_cache=False``); it assumes (B, L) ids, so 2D RoPE's (2, B, L) streams crash it, and image
    blocks' positions (not consecutive) would be split into wrong "samples". An explicit 2D mask is
    the supported way to skip that inference. All True, because padding is a sample of its own in
    :func:`varlen_kwargs` (a real padding mask would make flash-attention unpad and drop the
    boundaries); with no padding, sdpa's and flash-attention's mask functions return ``None``, so
    nothing L x L is built.
    """
    return torch.ones(segments.shape, dtype=torch.bool, device=segments.device)


def varlen_kwargs(segments: torch.Tensor) -> dict[str, Any]:
    """FlashAttention varlen arguments for the flattened (B * L) batch: one sequence per (row, sample/padding)."""
    key, _ = segment_keys(segments)
    change = (key[1:] != key[:-1]).nonzero().flatten() + 1
    bounds = torch.cat([key.new_zeros(1), change, key.new_full((1,), key.numel())]).to(torch.int32)
    longest = int(bounds.diff().max()) if bounds.numel() > 1 else 0
    return dict(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)


def flex_block_mask(segments: torch.Tensor) -> Any:
    """A FlexAttention ``BlockMask`` of the block-diagonal causal pattern (blocks without a sample are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_sample_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (segments[b, q] == segments[b, kv]) & (q >= kv)

    bsz, length = segments.shape
    return create_block_mask(same_sample_causal, B=bsz, H=None, Q_LEN=length, KV_LEN=length,
                             device=segments.device)


def packed_attention(implementation: str | None, segments: torch.Tensor,
                     dtype: torch.dtype) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """``(attention_mask, extra forward kwargs)`` that make attention block-diagonal for ``implementation``."""
    impl = implementation or "eager"
    check_packing_implementation(impl)
    if impl.startswith(VARLEN_PREFIX):
        return no_padding_mask(segments), varlen_kwargs(segments)
    if impl == PACKED_SDPA:  # the boundaries are read on the host once, not in every layer
        bounds = {k: v.cpu() if torch.is_tensor(v) else v for k, v in varlen_kwargs(segments).items()}
        return no_padding_mask(segments), bounds
    if impl == "flex_attention":
        return flex_block_mask(segments), {}
    allowed = block_causal_mask(segments)
    if impl == "sdpa":
        return allowed, {}
    additive = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min), {}


def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """:data:`PACKED_SDPA`: transformers' sdpa, once per sample when ``cu_seq_lens_q`` marks packed samples.

    ``query`` is (B, heads, L, head_dim); each sample is a contiguous run of the flattened B * L
    positions and attends causally to itself only. Returns (B, L, heads, head_dim) like sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in VARLEN_KEYS and k != "is_causal"}
    bsz, heads, length, dim = query.shape

    def flat(t: torch.Tensor) -> torch.Tensor:  # (B, h, L, d) -> (1, h, B * L, d)
        return t.transpose(0, 1).reshape(1, t.shape[1], bsz * length, t.shape[-1])

    q, k, v = flat(query), flat(key), flat(value)
    cuts = bounds.tolist()
    parts = [sdpa_attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, is_causal=True, **rest)[0]
             for a, b in zip(cuts[:-1], cuts[1:])]
    return torch.cat(parts, dim=1).view(bsz, length, heads, dim), None


def register_packed_sdpa() -> None:
    """Make :data:`PACKED_SDPA` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


register_packed_sdpa()
