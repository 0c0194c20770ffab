"""``--permute_image_tokens --permute_seed S``: the permutation probe of "Beyond Semantics".

Each image's tokens are shuffled by a random permutation after the projector and every other
post-projector / post-norm add-on (compression included: the permutation acts on the pooled
tokens), before the grid layout and the block stage. Only the feature vectors move: the layout
(1D/2D positions, the interleaved "row,col" coordinate tokens, the register tokens) stays as it
is, and the number of tokens per image is unchanged. With ``mm_vision_select_feature cls_patch``
the CLS token stays first and only the patch tokens are permuted.

The permutation of one image depends only on the run seed and that image's pixels, never on the
batch it is in or its place there:

* ``digest = sha256(float32 bytes of the image's pixel tensor (3, H, W), C order)`` — the
  tensor the vision tower receives (so the preprocessing and the model dtype are part of it);
* ``generator seed = int.from_bytes(sha256(f"{seed}:".encode() + digest)[:8], "little")``;
* ``permutation = torch.randperm(T, generator=torch.Generator().manual_seed(generator seed))``.

The stage reads the pixels from its context (``StageContext.images``); the add-on has no module
and adds nothing to any state dict. Inference tools switch the probe on for a loaded model by
writing this add-on's typed config (``write_config``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import Addon, Stage, StageContext, arg

DEFAULT_SEED = 0


def pixel_digest(pixels: torch.Tensor) -> bytes:
    """sha256 of one image's pixel tensor as float32 bytes (C order)."""
    data = pixels.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).digest()


def generator_seed(seed: int, digest: bytes) -> int:
    """The per-image generator seed: the first 8 bytes (little endian) of sha256(b"<seed>:" + digest)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:".encode() + digest).digest()[:8], "little")


def image_permutation(seed: int, digest: bytes, n: int) -> torch.Tensor:
    """The permutation of ``n`` tokens for the image with ``digest`` under run seed ``seed`` (CPU, int64)."""
    gen = torch.Generator().manual_seed(generator_seed(seed, digest))
    return torch.randperm(n, generator=gen)


def permute_tokens(tokens: torch.Tensor, digests: list[bytes], seed: int, has_cls: bool) -> torch.Tensor:
    """(N, T, D) -> (N, T, D): row i permuted by its image's permutation (CLS, when present, stays first)."""
    n, t, d = tokens.shape
    start = 1 if has_cls else 0
    perms = torch.stack([image_permutation(seed, dig, t - start) + start for dig in digests])
    if start:
        perms = torch.cat([perms.new_zeros(n, 1), perms], dim=1)
    index = perms.to(tokens.device).unsqueeze(-1).expand(n, t, d)
    return torch.gather(tokens, 1, index)


@dataclass
class PermuteArgs:
    permute_image_tokens: bool = field(default=False, metadata={
        "help": "Permutation probe: shuffle each image's tokens after the projector (and compression) by a "
                "random permutation seeded by --permute_seed and the image's pixels."})
    permute_seed: int | None = field(default=None, metadata={
        "help": f"Run seed of --permute_image_tokens (default {DEFAULT_SEED})."})


@dataclass
class PermuteConfig:
    permute_image_tokens: bool = False
    permute_seed: int = DEFAULT_SEED


class Permute(Addon):
    """Post-norm stage (last in registry order): each image's tokens permuted, the layout kept."""

    name = "permute"
    Args = PermuteArgs
    Config = PermuteConfig
    switch = "permute_image_tokens"
    stage = Stage.POST_NORM

    @classmethod
    def from_args(cls, args: Any) -> PermuteConfig:
        seed = arg(args, cls, "permute_seed")
        seed = DEFAULT_SEED if seed is None else seed
        if isinstance(seed, bool) or int(seed) != seed:
            raise ValueError(f"--permute_seed {seed} is not valid: give an integer.")
        return PermuteConfig(True, int(seed))

    @classmethod
    def apply(cls, cfg: PermuteConfig, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        if ctx.images is None or ctx.images.shape[0] != x.shape[0]:
            raise RuntimeError("permute_image_tokens needs the pixels of every encoded image (StageContext.images)")
        return permute_tokens(x, [pixel_digest(p) for p in ctx.images], cfg.permute_seed, ctx.has_cls)
