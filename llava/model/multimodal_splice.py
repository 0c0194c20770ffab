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
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    valid = attention_mask.bool()
    is_img = (input_ids == IMAGE_TOKEN_INDEX) & valid
    _check_image_count(is_img, image_features.shape[0], unused_images)
    if segments is not None:
        segments = segments.masked_fill(~valid, 0)
    place = _place_tokens(valid, is_img, image_features.shape[1], max_length, padding_side, truncate, segments)
    embeds = _scatter_embeddings(place, input_ids, image_features, embed_tokens)
    position_ids, image_mask = _positions(place, layout, two_d, segments)
    new_labels = None
    if labels is not None:
        new_labels = torch.full((place.bsz, place.out_len), IGNORE_INDEX, dtype=labels.dtype, device=place.valid.device)
        new_labels[place.tb, place.t_dest] = labels[place.tb, place.tt]
    return SpliceResult(
        inputs_embeds=embeds,
        attention_mask=place.new_mask.to(attention_mask.dtype),
        position_ids=position_ids,
        labels=new_labels,
        image_mask=image_mask,
        segments=None if segments is None else _spliced_segments(place, segments),
    )


@dataclass
class _Placement:
    """Where every kept input token lands in the (B, L_new) output: text tokens ``(tb, tt) -> t_dest``, image
    placeholders ``(ib, it)`` -> the T columns ``i_dest`` of rows ``i_rows`` (``i_keep``: not cut off)."""

    bsz: int
    out_len: int
    n_tokens: int
    valid: torch.Tensor
    is_img: torch.Tensor
    new_mask: torch.Tensor
    tb: torch.Tensor
    tt: torch.Tensor
    t_dest: torch.Tensor
    ib: torch.Tensor
    it: torch.Tensor
    i_rows: torch.Tensor
    i_dest: torch.Tensor
    i_keep: torch.Tensor

    @property
    def i_flat(self) -> torch.Tensor:
        """(n_images, T) flat ``row * L_new + column`` index of every image token."""
        return self.i_rows * self.out_len + self.i_dest


def _check_image_count(is_img: torch.Tensor, n_images: int, unused_images: bool) -> None:
    """Raise unless the batch has exactly one placeholder per image (or none with ``unused_images``)."""
    per_sample = is_img.sum(dim=1)
    n_placeholders = int(per_sample.sum())
    if unused_images and n_placeholders != 0:
        raise ValueError("unused_images=True is only for batches without <image> placeholders")
    if n_placeholders != n_images and not unused_images:
        raise ValueError(
            f"The batch has {n_placeholders} <image> placeholders (per sample: {per_sample.tolist()}) "
            f"but {n_images} images were given. Each <image> in a prompt needs exactly one image; images "
            "are matched to placeholders in order, sample by sample."
        )


def _place_tokens(valid: torch.Tensor, is_img: torch.Tensor, n_tokens: int, max_length: int | None,
                  padding_side: str, truncate: bool, segments: torch.Tensor | None) -> _Placement:
    """Output length per sample (truncated or checked against ``max_length``), padding offsets and the
    destination of every text token and image block."""
    bsz, seq_len = valid.shape
    device = valid.device
    # Width each input position occupies in the output: 1 per text token, T per image, 0 for padding.
    width = torch.where(is_img, n_tokens, valid.long())
    ends = width.cumsum(dim=1)
    starts = ends - width
    new_len = ends[:, -1] if seq_len > 0 else torch.zeros(bsz, dtype=torch.long, device=device)
    if max_length is not None and segments is not None:
        _check_packed_lengths(width, segments, max_length)
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
    cols = torch.arange(out_len, device=device).unsqueeze(0)
    new_mask = (cols >= offset.unsqueeze(1)) & (cols < (offset + new_len).unsqueeze(1))

    tb, tt = (valid & ~is_img).nonzero(as_tuple=True)
    t_dest = starts[tb, tt]
    keep = t_dest < new_len[tb]
    if not bool(keep.all()):
        tb, tt, t_dest = tb[keep], tt[keep], t_dest[keep]
    t_dest = t_dest + offset[tb]
    ib, it = is_img.nonzero(as_tuple=True)
    i_dest = starts[ib, it].unsqueeze(1) + torch.arange(n_tokens, device=device)
    i_rows = ib.unsqueeze(1).expand(-1, n_tokens)
    i_keep = i_dest < new_len[i_rows]
    i_dest = i_dest + offset[i_rows]
    return _Placement(bsz, out_len, n_tokens, valid, is_img, new_mask, tb, tt, t_dest, ib, it, i_rows, i_dest,
                      i_keep)


def _scatter_embeddings(place: _Placement, input_ids: torch.Tensor, image_features: torch.Tensor,
                        embed_tokens: nn.Module) -> torch.Tensor:
    """(B, L_new, D) embeddings: rows scattered through a flat (B * L_new, D) view with index_copy_ (one pass,
    no full copies); padding is zero."""
    text_embeds = embed_tokens(input_ids[place.tb, place.tt])
    hidden = text_embeds.shape[-1]
    flat = text_embeds.new_empty(place.bsz * place.out_len, hidden)
    flat.index_fill_(0, (~place.new_mask).reshape(-1).nonzero().squeeze(1), 0.0)
    flat.index_copy_(0, place.tb * place.out_len + place.t_dest, text_embeds)
    feats = image_features.to(flat.dtype)
    i_flat = place.i_flat
    if bool(place.i_keep.all()):
        dest = i_flat.reshape(-1)
        flat.index_copy_(0, dest, feats.reshape(-1, hidden)[: dest.numel()])
    else:
        flat.index_copy_(0, i_flat[place.i_keep], feats[place.i_keep])
    return flat.view(place.bsz, place.out_len, hidden)


def _positions(place: _Placement, layout: BlockLayout | None, two_d: bool,
               segments: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position_ids, image_mask)``. Text advances the counter by 1, an image block by ``layout.advance()``;
    block tokens sit at start + offset (row and column streams, identical unless ``two_d``); a packed batch
    restarts at 0 on each sample."""
    device, n_tokens = place.valid.device, place.n_tokens
    if layout is None:
        ar = torch.arange(n_tokens, device=device)
        offsets, advance = torch.stack([ar, ar]), n_tokens
        is_feature = torch.ones(n_tokens, dtype=torch.bool, device=device)
    else:
        offsets, advance, is_feature = layout.position_offsets(two_d), layout.advance(two_d), layout.is_feature
    pos_width = torch.where(place.is_img, advance, place.valid.long())
    pos_start = pos_width.cumsum(dim=1) - pos_width
    if segments is not None:
        pos_start = restart_per_segment(pos_start, segments)
    bsz, out_len, i_keep, i_flat = place.bsz, place.out_len, place.i_keep, place.i_flat
    pos = torch.zeros(2, bsz * out_len, dtype=torch.long, device=device)
    pos[:, place.tb * out_len + place.t_dest] = pos_start[place.tb, place.tt]
    img_pos = pos_start[place.ib, place.it].view(1, -1, 1) + offsets.to(device).unsqueeze(1)
    pos[:, i_flat[i_keep]] = img_pos[:, i_keep]
    position_ids = pos.view(2, bsz, out_len) if two_d else pos[0].view(bsz, out_len)
    image_mask = torch.zeros(bsz * out_len, dtype=torch.bool, device=device)
    image_mask[i_flat[i_keep]] = is_feature.to(device).unsqueeze(0).expand_as(i_keep)[i_keep]
    return position_ids, image_mask.view(bsz, out_len)


def _spliced_segments(place: _Placement, segments: torch.Tensor) -> torch.Tensor:
    """(B, L_new) sample ids of the output positions (an image block takes its placeholder's id)."""
    out = torch.zeros(place.bsz * place.out_len, dtype=segments.dtype, device=segments.device)
    out[place.tb * place.out_len + place.t_dest] = segments[place.tb, place.tt]
    i_keep = place.i_keep
    out[place.i_flat[i_keep]] = segments[place.ib, place.it].unsqueeze(1).expand_as(i_keep)[i_keep]
    return out.view(place.bsz, place.out_len)


def _check_packed_lengths(width: torch.Tensor, segments: torch.Tensor, max_length: int) -> None:
    """Raise when a sample of a packed batch takes more than ``max_length`` positions."""
    key, n_seg = segment_keys(segments)
    bsz = segments.shape[0]
    per_sample = torch.zeros(bsz * n_seg, dtype=torch.long, device=segments.device).scatter_add_(
        0, key, width.reshape(-1)).view(bsz, n_seg)[:, 1:]
    longest = int(per_sample.max()) if per_sample.numel() else 0
    if longest > max_length:
        raise ValueError(f"a packed sample takes {longest} positions but the model's limit is {max_length} "
                         "(tokenizer_model_max_length); pack samples within the limit (llava.data.packing does)")
