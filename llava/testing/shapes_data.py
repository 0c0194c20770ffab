"""Tiny synthetic LLaVA dataset for end-to-end training runs (tests, the GPU check): coloured shapes on a 2x2 grid.

:func:`write_shapes_dataset` draws ``n`` PNGs (one shape per image, colour/shape/cell chosen
deterministically) and writes two LLaVA-format JSON files next to them: ``pretrain.json``
(caption pairs for the ``plain`` template) and ``finetune.json`` (a question/answer turn per image
plus a few text-only samples, so modality grouping sees both kinds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square", "triangle")
CELLS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}


@dataclass(frozen=True)
class ShapesDataset:
    """Paths written by :func:`write_shapes_dataset`."""

    root: str
    image_folder: str
    pretrain_json: str
    finetune_json: str


def _draw(shape: str, colour: tuple[int, int, int], cell: tuple[int, int], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    half = size // 2
    x0, y0 = cell[0] * half + half // 6, cell[1] * half + half // 6
    x1, y1 = x0 + half * 2 // 3, y0 + half * 2 // 3
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=colour)
    return img


def write_shapes_dataset(
    root: str | os.PathLike, n: int = 32, size: int = 64, text_only: int = 4
) -> ShapesDataset:
    """Write ``n`` shape images plus ``pretrain.json`` / ``finetune.json`` under ``root``."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours, cells = list(COLOURS), list(CELLS)
    pretrain, finetune = [], []
    for i in range(n):
        colour, shape, cell = colours[i % 4], SHAPES[(i // 4) % 3], cells[(i // 12 + i) % 4]
        name = f"{i:03d}.png"
        _draw(shape, COLOURS[colour], CELLS[cell], size).save(images / name)
        caption = f"a {colour} {shape} at the {cell}."
        pretrain.append({"id": f"p{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\n"},
            {"from": "gpt", "value": caption},
        ]})
        finetune.append({"id": f"f{i}", "image": name, "conversations": [
            {"from": "human", "value": "What shape is in the image?\n<image>"},
            {"from": "gpt", "value": f"It is a {colour} {shape}."},
            {"from": "human", "value": "Where is it?"},
            {"from": "gpt", "value": f"At the {cell}."},
        ]})
    for j in range(text_only):
        finetune.append({"id": f"t{j}", "conversations": [
            {"from": "human", "value": f"What is {j} and one?"},
            {"from": "gpt", "value": f"{j + 1}."},
        ]})
    paths = ShapesDataset(str(root), str(images), str(root / "pretrain.json"), str(root / "finetune.json"))
    for path, data in ((paths.pretrain_json, pretrain), (paths.finetune_json, finetune)):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    return paths
