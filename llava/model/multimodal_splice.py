"""Vectorized splice of image features into a batch of token embeddings.

Every ``IMAGE_TOKEN_INDEX`` (-200) placeholder among the attended tokens of ``input_ids`` is
replaced by the ``T`` feature vectors of the next image (images are consumed in row-major
order: sample by sample, left to right). Padding is dropped and re-applied on the requested
side, labels of image positions become ``IGNORE_INDEX``, sequences are truncated to
``max_length`` and position ids restart at 0 on each sample's first real token. All of it is
done with tensor ops: there is no Python loop over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .block_layout import BlockLayout
from .packing import restart_per_segment, segment_keys


@dataclass
class SpliceResult:
    """Output of :func:`splice_image_features`; every tensor is (B, L_new[, D])."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    """(B, L_new), or (2, B, L_new) row/column streams when 2D RoPE is on."""
    labels: torch.Tensor | None
    image_mask: torch.Tensor
    """True where an image feature was written (inserted coordinate tokens excluded)."""
    segments: torch.Tensor | None = None
    """(B, L_new) sample ids of a packed batch (0 on padding; an image block takes its placeholder's id)."""
    vision_features: torch.Tensor | None = None
    """(N, T, mm_hidden) projector input of the images (set by the model, for the regularizers)."""
    projected: torch.Tensor | None = None
    """(N, T, hidden) raw projector output of the images."""


def splice_image_features(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_features: torch.Tensor,
    embed_tokens: nn.Module,
    max_length: int | None = None,
    padding_side: str = "right",
    layout: BlockLayout | None = None,
    two_d: bool = False,
    unused_images: bool = False,
    truncate: bool = True,
    segments: torch.Tensor | None = None,
) -> SpliceResult:
    """Replace each image placeholder by the features of one image; see the module docstring.

    ``image_features`` is (N, T, D) with N equal to the number of placeholders in the batch.
    ``layout`` describes the T block tokens (grid cells, which are real features); with
    ``two_d`` the position ids are (2, B, L) row/column streams for 2D RoPE.
    ``unused_images`` (a batch without placeholders) keeps ``image_features`` in the autograd
    graph through a zero-row copy, so a text-only training batch builds the same graph as an
    image batch (same gradient order on every rank under ZeRO-3). ``truncate=False`` (generation)
    raises instead of cutting a sequence longer than ``max_length``: a cut prompt loses its end.
    ``segments`` (B, L): sample ids of a packed batch (:mod:`llava.model.packing`); position ids then
    restart at 0 on each sample, the result carries the ids of every output position, and
    ``max_length`` bounds each sample instead of the row (a packed row may hold more; nothing is cut:
    a longer sample raises, the packer never makes one).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    bsz, seq_len = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    valid = attention_mask.bool()
    is_img = (input_ids == IMAGE_TOKEN_INDEX) & valid
    per_sample = is_img.sum(dim=1)
    n_images, n_tokens = image_features.shape[0], image_features.shape[1]
    n_placeholders = int(per_sample.sum())
    if unused_images and n_placeholders != 0:
        raise ValueError("unused_images=True is only for batches without <image> placeholders")
    if n_placeholders != n_images and not unused_images:
        raise ValueError(
            f"The batch has {n_placeholders} <image> placeholders (per sample: {per_sample.tolist()}) "
            f"but {n_images} images were given. Each <image> in a prompt needs exactly one image; images "
            "are matched to placeholders in order, sample by sample."
        )

    # Width each input position occupies in the output: 1 per text token, T per image, 0 for padding.
    width = torch.where(is_img, n_tokens, valid.long())
    ends = width.cumsum(dim=1)
    starts = ends - width
    new_len = ends[:, -1] if seq_len > 0 else torch.zeros(bsz, dtype=torch.long, device=device)
    if max_length is not None and segments is not None:
        _check_packed_lengths(width, segments.masked_fill(~valid, 0), max_length)
    elif max_length is not None:
        if not truncate and bool((new_len > max_length).any()):
            longest = int(new_len.max())
            raise ValueError(
                f"the prompt takes {longest} positions ({n_tokens} per image included) but the model's limit "
                f"is {max_length} (tokenizer_model_max_length); shorten the prompt or use fewer images"
            )
        new_len = new_len.clamp(max=max_length)
    out_len = int(new_len.max()) if bsz > 0 else 0
    offset = (out_len - new_len) if padding_side == "left" else torch.zeros_like(new_len)

    text_mask = valid & ~is_img
    cols = torch.arange(out_len, device=device).unsqueeze(0)
    new_mask = (cols >= offset.unsqueeze(1)) & (cols < (offset + new_len).unsqueeze(1))

    # Scatter rows through a flat (B * L_new, D) view with index_copy_: one pass, no full copies.
    tb, tt = text_mask.nonzero(as_tuple=True)
    t_dest = starts[tb, tt]
    keep = t_dest < new_len[tb]
    if not bool(keep.all()):
        tb, tt, t_dest = tb[keep], tt[keep], t_dest[keep]
    t_dest = t_dest + offset[tb]
    text_embeds = embed_tokens(input_ids[tb, tt])
    hidden = text_embeds.shape[-1]
    flat = text_embeds.new_empty(bsz * out_len, hidden)
    flat.index_fill_(0, (~new_mask).reshape(-1).nonzero().squeeze(1), 0.0)
    flat.index_copy_(0, tb * out_len + t_dest, text_embeds)

    ib, it = is_img.nonzero(as_tuple=True)
    i_dest = starts[ib, it].unsqueeze(1) + torch.arange(n_tokens, device=device)
    i_rows = ib.unsqueeze(1).expand(-1, n_tokens)
    i_keep = i_dest < new_len[i_rows]
    i_dest = i_dest + offset[i_rows]
    feats = image_features.to(flat.dtype)
    if bool(i_keep.all()):
        dest = (i_rows * out_len + i_dest).reshape(-1)
        flat.index_copy_(0, dest, feats.reshape(-1, hidden)[: dest.numel()])
    else:
        flat.index_copy_(0, (i_rows * out_len + i_dest)[i_keep], feats[i_keep])

    embeds = flat.view(bsz, out_len, hidden)

    # Positions: text advances the counter by 1, an image block by layout.advance(); block tokens
    # sit at start + offset (row and column streams; identical streams unless two_d).
    if layout is None:
        ar = torch.arange(n_tokens, device=device)
        offsets, advance, is_feature = torch.stack([ar, ar]), n_tokens, torch.ones(n_tokens, dtype=torch.bool,
                                                                                   device=device)
    else:
        offsets, advance, is_feature = layout.position_offsets(two_d), layout.advance(two_d), layout.is_feature
    pos_width = torch.where(is_img, advance, valid.long())
    pos_start = pos_width.cumsum(dim=1) - pos_width
    if segments is not None:
        segments = segments.masked_fill(~valid, 0)
        pos_start = restart_per_segment(pos_start, segments)
    pos = torch.zeros(2, bsz * out_len, dtype=torch.long, device=device)
    pos[:, tb * out_len + t_dest] = pos_start[tb, tt]
    img_pos = pos_start[ib, it].view(1, -1, 1) + offsets.to(device).unsqueeze(1)
    i_flat = i_rows * out_len + i_dest
    pos[:, i_flat[i_keep]] = img_pos[:, i_keep]
    position_ids = pos.view(2, bsz, out_len) if two_d else pos[0].view(bsz, out_len)
    image_mask = torch.zeros(bsz * out_len, dtype=torch.bool, device=device)
    image_mask[i_flat[i_keep]] = is_feature.to(device).unsqueeze(0).expand_as(i_keep)[i_keep]
    image_mask = image_mask.view(bsz, out_len)

    new_segments = None
    if segments is not None:
        new_segments = torch.zeros(bsz * out_len, dtype=segments.dtype, device=device)
        new_segments[tb * out_len + t_dest] = segments[tb, tt]
        new_segments[i_flat[i_keep]] = segments[ib, it].unsqueeze(1).expand_as(i_keep)[i_keep]
        new_segments = new_segments.view(bsz, out_len)

    new_labels = None
    if labels is not None:
        new_labels = torch.full((bsz, out_len), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[tb, t_dest] = labels[tb, tt]

    return SpliceResult(
        inputs_embeds=embeds,
        attention_mask=new_mask.to(attention_mask.dtype),
        position_ids=position_ids,
        labels=new_labels,
        image_mask=image_mask,
        segments=new_segments,
    )


def _check_packed_lengths(width: torch.Tensor, segments: torch.Tensor, max_length: int) -> None:
    """Raise when a sample of a packed batch takes more than ``max_length`` positions."""
    key, n_seg = segment_keys(segments)
    bsz = segments.shape[0]
    per_sample = torch.zeros(bsz * n_seg, dtype=torch.long, device=segments.device).scatter_add_(
        0, key, width.reshape(-1)).view(bsz, n_seg)[:, 1:]
    longest = int(per_sample.max()) if per_sample.numel() else 0
    if longest > max_length:
        raise ValueError(f"a packed sample takes {longest} positions but the model's limit is {max_length} "
                         "(tokenizer_model_max_length); pack samples within the limit (llava.train.packing does)")
