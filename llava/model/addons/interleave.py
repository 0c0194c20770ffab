"""``--interleave --interleave_sparsity k``: insert "row,col" coordinate tokens into each image block.

After every k-th image token (k = 1: after each) the embeddings of the tokenized string
``f"{row},{col}"`` of that token's grid cell are inserted. They are unsupervised (label -100),
count toward ``model_max_length`` and, under 2D RoPE, share the grid cell of the token they
follow. The token ids per cell are computed once from the tokenizer and stored in the config
(``mm_interleave_coord_ids``), so a checkpoint rebuilds the same blocks without a tokenizer.
The reference implementation never passed k on; here it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..block_layout import BlockLayout
from .base import Addon, Geometry, Stage, StageContext, arg


def validate_sparsity(k: int | None) -> int:
    if k is None or int(k) < 1:
        raise ValueError(
            f"--interleave_sparsity {k} is not valid: it is the number of image tokens between two inserted "
            "coordinate strings and must be an integer >= 1 (1 = after every image token)."
        )
    return int(k)


def coordinate_token_ids(tokenizer: Any, side: int) -> list[list[int]]:
    """Token ids of "r,c" for every cell of a ``side`` x ``side`` grid (row-major)."""
    return [tokenizer(f"{r},{c}", add_special_tokens=False).input_ids for r in range(side) for c in range(side)]


def build_block(features: torch.Tensor, base: BlockLayout, coord_ids: list[list[int]], sparsity: int,
                embed_tokens: nn.Module) -> tuple[torch.Tensor, BlockLayout]:
    """(N, T, D) features -> (N, T', D) blocks with coordinate embeddings inserted, plus their layout."""
    device = features.device
    t = features.shape[1]
    if coord_ids is None:
        raise ValueError("interleave: the config has no mm_interleave_coord_ids; call "
                         "model.initialize_vision_tokenizer(model_args, tokenizer) once after building the model.")
    if len(coord_ids) != t:
        raise ValueError(
            f"interleave: the config has coordinate ids for {len(coord_ids)} cells but images have {t} tokens; "
            "the grid changed since the ids were computed (re-run initialize_vision_tokenizer)."
        )
    feat_index: list[int] = []
    token_ids: list[int] = []
    for j in range(t):
        feat_index.append(j)
        token_ids.append(0)
        if (j + 1) % sparsity == 0:
            feat_index += [j] * len(coord_ids[j])
            token_ids += coord_ids[j]
    src = torch.tensor(feat_index, device=device)
    ids = torch.tensor(token_ids, device=device)
    is_feature = torch.ones(len(feat_index), dtype=torch.bool, device=device)
    is_feature[1:] = src[1:] != src[:-1]
    coord_embeds = embed_tokens(ids).to(features.dtype)
    blocks = torch.where(is_feature.view(1, -1, 1), features[:, src], coord_embeds.unsqueeze(0))
    layout = BlockLayout(rows=base.rows[src], cols=base.cols[src], is_feature=is_feature, side=base.side)
    return blocks, layout


@dataclass
class InterleaveArgs:
    interleave: bool = field(default=False, metadata={
        "help": "Insert 'row,col' coordinate tokens among the image tokens (see --interleave_sparsity)."})
    interleave_sparsity: int | None = field(default=None, metadata={
        "help": "Insert a coordinate string after every k-th image token (k >= 1, default 1)."})


@dataclass
class InterleaveConfig:
    interleave: bool = False
    interleave_sparsity: int = 1
    mm_interleave_coord_ids: list[list[int]] | None = None


class Interleave(Addon):
    """Block stage: coordinate-string embeddings inserted after every k-th image token."""

    name = "interleave"
    Args = InterleaveArgs
    Config = InterleaveConfig
    switch = "interleave"
    stage = Stage.BLOCK

    @classmethod
    def from_args(cls, args: Any) -> InterleaveConfig:
        k = arg(args, cls, "interleave_sparsity")
        return InterleaveConfig(True, validate_sparsity(1 if k is None else k))

    @classmethod
    def validate(cls, cfg: InterleaveConfig, geo: Geometry) -> None:
        if geo.has_cls:
            raise ValueError("--interleave needs a square patch grid: use --mm_vision_select_feature patch "
                             "(not cls_patch).")
        n = geo.out_side * geo.out_side
        if cfg.interleave_sparsity > n:
            raise ValueError(f"--interleave_sparsity {cfg.interleave_sparsity} is larger than the {n} tokens of "
                             f"each image, so no coordinate would be inserted; use a value in 1..{n}.")

    @classmethod
    def tokens(cls, cfg: InterleaveConfig, n: int) -> int:
        ids, k = cfg.mm_interleave_coord_ids, int(cfg.interleave_sparsity)
        return n + sum(len(ids[j]) for j in range(len(ids)) if (j + 1) % k == 0) if ids else n

    @classmethod
    def configure_tokenizer(cls, cfg: InterleaveConfig, tokenizer: Any, side: int) -> InterleaveConfig:
        return replace(cfg, mm_interleave_coord_ids=coordinate_token_ids(tokenizer, side))

    @classmethod
    def apply(cls, cfg: InterleaveConfig, x: Any, ctx: StageContext) -> Any:
        tokens, layout = x
        return build_block(tokens, layout, cfg.mm_interleave_coord_ids, cfg.interleave_sparsity,
                           ctx.base_model.embed_tokens)
