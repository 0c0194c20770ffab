"""Probe inputs: a labelled image folder (class = sub-folder) and per-image features of a checkpoint, before the
projector (the tower's selected features, multi-layer concat included) and after it (``encode_images``:
projector, normalization, compression, ... as the checkpoint's config says), pooled per :data:`POOLINGS`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llava.mm_utils import background_color_for, load_image, process_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
POOLINGS = ("mean", "tokens")
REPRESENTATIONS = ("pre", "post")


def list_labelled_images(folder: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, class index per image, class names) with one class per sub-folder of ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--image-folder {str(root)!r} is not a folder; it must hold one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for ci, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += found
        labels += [ci] * len(found)
    used = sorted({labels[i] for i in range(len(labels))})
    if len(used) < 2:
        raise ValueError(f"--image-folder {str(root)!r}: found images for {len(used)} class(es); the probe needs at "
                         "least 2 sub-folders (one per class) with images in each")
    return paths, labels, classes


def pool(tokens: torch.Tensor, how: str) -> torch.Tensor:
    """(N, T, C) -> (N, C) mean over tokens, or (N, T*C) all tokens concatenated."""
    if how == "mean":
        return tokens.mean(1)
    if how == "tokens":
        return tokens.flatten(1)
    raise ValueError(f"--pooling {how!r} is not one of {', '.join(POOLINGS)}")


def load_checkpoint(path: str, model_base: str | None, device: str) -> tuple[Any, Any]:
    """(model, image processor) through :func:`llava.model.builder.load_pretrained_model`."""
    from llava.model.builder import load_pretrained_model

    if not Path(path).exists():
        raise FileNotFoundError(f"--checkpoints {path!r} does not exist")
    _, model, processor, _ = load_pretrained_model(path, model_base, None, device=device)
    if processor is None:
        raise ValueError(f"checkpoint {path!r} has no vision tower; the probe needs a LLaVA checkpoint")
    return model.eval(), processor


@torch.no_grad()
def extract_features(model: Any, processor: Any, paths: list[Path], poolings: tuple[str, ...] = ("mean",),
                     batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{"pre/<pooling>": (N, D), "post/<pooling>": (N, D')}`` for every image, float32 on CPU."""
    tower = model.get_model().get_vision_tower()
    chunks: dict[str, list[torch.Tensor]] = {f"{r}/{p}": [] for r in REPRESENTATIONS for p in poolings}
    dtype = next(model.parameters()).dtype
    for b in range(0, len(paths), batch_size):
        pad = background_color_for(processor)
        pixels = process_images([load_image(p, pad) for p in paths[b:b + batch_size]], processor, model.config)
        pixels = pixels.to(device=model.device, dtype=dtype)
        reps = {"pre": tower(pixels), "post": model.encode_images(pixels)}
        for r, tokens in reps.items():
            for p in poolings:
                chunks[f"{r}/{p}"].append(pool(tokens.float(), p).cpu())
    return {k: torch.cat(v) for k, v in chunks.items()}
