"""Image-caption data for both phases: a dataset of (image, captions) records, a collate that groups
captions by image (so no caption of the same image becomes a negative), a JSON loader, a synthetic
coloured-shapes set, and cached frozen-encoder features.

JSON input (``load_records``): a list (or JSONL) of ``{"image": path, "captions": [...]}`` or
``{"image": path, "caption": "..."}`` (rows sharing an image are merged), or LLaVA-format records whose
``gpt`` turns are the captions. Relative image paths are resolved against ``image_folder``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

SYNTH_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 30),
                 "purple": (140, 50, 170), "orange": (245, 135, 25)}
SYNTH_SHAPES = ("circle", "square", "triangle")
SYNTH_TEMPLATES = ("a {c} {s}", "a picture of a {c} {s}", "one {c} {s} on white", "the {s} is {c}",
                   "a {c} {s} in the image")


@dataclass
class ImageTextRecord:
    """One image (a path or a PIL image) with all of its captions; ``image_id`` groups captions in a batch."""

    image_id: str
    image: str | Image.Image
    captions: list[str]


def _open(image: str | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (FileNotFoundError, OSError) as e:
        raise OSError(f"cannot read image {image}: {e}; check --image_folder and the data file") from e


class ImageTextDataset(Dataset):
    """Records -> items ``{"image_id", "image", "captions"}`` with ``captions_per_image`` captions each
    (sampled without replacement per access when training; all captions when ``captions_per_image`` is None).

    With ``features`` (from :func:`cache_features`) items carry ``image_features``/``text_features``
    instead of decoded images and strings.
    """

    def __init__(self, records: Sequence[ImageTextRecord], captions_per_image: int | None = 1, seed: int = 0,
                 features: dict[str, Any] | None = None) -> None:
        if not records:
            raise ValueError("ImageTextDataset got no records; check the data file")
        for r in records:
            if not r.captions:
                raise ValueError(f"image {r.image_id} has no captions")
        self.records = list(records)
        self.captions_per_image = captions_per_image
        self.rng = random.Random(seed)
        self.features = features

    def __len__(self) -> int:
        return len(self.records)

    def _pick(self, n: int) -> list[int]:
        k = n if self.captions_per_image is None else min(self.captions_per_image, n)
        return list(range(n)) if k == n else sorted(self.rng.sample(range(n), k))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rec = self.records[idx]
        picks = self._pick(len(rec.captions))
        item: dict[str, Any] = {"image_id": rec.image_id, "captions": [rec.captions[i] for i in picks]}
        if self.features is not None:
            item["image_features"] = self.features["image"][idx]
            rows = self.features["caption_rows"][idx]
            item["text_features"] = self.features["text"][[rows[i] for i in picks]]
        else:
            item["image"] = _open(rec.image)
        return item

    @property
    def all_captions(self) -> list[tuple[int, str]]:
        """Every (record index, caption) pair, in order."""
        return [(i, c) for i, r in enumerate(self.records) for c in r.captions]


def collate_image_text(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Group by ``image_id``: each image once, all captions with ``caption_image_index`` pointing at it."""
    order: dict[str, int] = {}
    images: list[Any] = []
    img_feats: list[torch.Tensor] = []
    captions: list[str] = []
    txt_feats: list[torch.Tensor] = []
    owner: list[int] = []
    for it in items:
        if it["image_id"] not in order:
            order[it["image_id"]] = len(order)
            if "image_features" in it:
                img_feats.append(it["image_features"])
            else:
                images.append(it["image"])
        captions.extend(it["captions"])
        owner.extend([order[it["image_id"]]] * len(it["captions"]))
        if "text_features" in it:
            txt_feats.append(it["text_features"])
    batch: dict[str, Any] = {"image_ids": list(order), "captions": captions,
                             "caption_image_index": torch.tensor(owner, dtype=torch.long)}
    if img_feats:
        batch["image_features"] = torch.stack(img_feats)
        batch["text_features"] = torch.cat(txt_feats)
    else:
        batch["images"] = images
    return batch


def create_dataloader(dataset: ImageTextDataset, batch_size: int = 32, shuffle: bool = True, num_workers: int = 0,
                      seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` with :func:`collate_image_text` and a seeded shuffle."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_image_text, generator=gen, drop_last=drop_last)


def load_records(path: str | os.PathLike, image_folder: str | os.PathLike | None = None) -> list[ImageTextRecord]:
    """Read a JSON/JSONL caption file (formats in the module docstring); rows sharing an image are merged."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} not found (--data)")
    text = p.read_text()
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)
    root = Path(image_folder) if image_folder else p.parent
    merged: dict[str, ImageTextRecord] = {}
    for n, row in enumerate(rows):
        if "image" not in row:
            raise ValueError(f"{p} row {n} has no 'image' key")
        if "captions" in row:
            caps = list(row["captions"])
        elif "caption" in row:
            caps = [row["caption"]]
        elif "conversations" in row:
            caps = [t["value"].strip() for t in row["conversations"] if t.get("from") == "gpt"]
        else:
            raise ValueError(f"{p} row {n} needs 'captions', 'caption' or LLaVA 'conversations'")
        img = str(row["image"]) if os.path.isabs(row["image"]) else str(root / row["image"])
        rec = merged.setdefault(img, ImageTextRecord(image_id=img, image=img, captions=[]))
        rec.captions.extend(c for c in caps if c)
    return list(merged.values())


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def synthetic_shapes(num_images: int, image_size: int = 32, seed: int = 0, captions_per_image: int = 3,
                     classes: Sequence[tuple[str, str]] | None = None) -> list[ImageTextRecord]:
    """Coloured shapes on white at random positions/sizes, each with ``captions_per_image`` template captions.

    Classes (colour, shape) cycle in order, so ``num_images = len(classes)`` gives one image per class
    (a held-out set where every image has a distinct description).
    """
    rng = random.Random(seed)
    classes = list(classes or [(c, s) for c in SYNTH_COLOURS for s in SYNTH_SHAPES])
    out = []
    for i in range(num_images):
        colour, shape = classes[i % len(classes)]
        im = Image.new("RGB", (image_size, image_size), (255, 255, 255))
        side = rng.randint(image_size // 2, image_size - 2)
        x0, y0 = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
        _draw_shape(ImageDraw.Draw(im), shape, (x0, y0, x0 + side - 1, y0 + side - 1), SYNTH_COLOURS[colour])
        temps = rng.sample(SYNTH_TEMPLATES, min(captions_per_image, len(SYNTH_TEMPLATES)))
        out.append(ImageTextRecord(image_id=f"synth_{seed}_{i}", image=im,
                                   captions=[t.format(c=colour, s=shape) for t in temps]))
    return out


def save_records(records: Sequence[ImageTextRecord], out_dir: str | os.PathLike, name: str = "data.json") -> Path:
    """Write records as PNGs + a ``{"image", "captions"}`` JSON in ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, r in enumerate(records):
        rel = f"images/{Path(name).stem}_{n:05d}.png"
        _open(r.image).save(out / rel)
        rows.append({"image": rel, "captions": list(r.captions)})
    path = out / name
    path.write_text(json.dumps(rows, indent=1))
    return path


@torch.no_grad()
def cache_features(encode_images: Callable[[list[Image.Image]], torch.Tensor],
                   encode_texts: Callable[[list[str]], torch.Tensor], dataset: ImageTextDataset,
                   batch_size: int = 64, cache_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the frozen encoders once over every image and caption of ``dataset``.

    Returns ``{"image": (N, dv), "text": (M, dt), "caption_rows": [[row, ...] per record]}``; with
    ``cache_path`` the result is loaded from / saved to that ``.pt`` file (delete it after changing encoders).
    """
    if cache_path is not None and Path(cache_path).is_file():
        feats = torch.load(cache_path, map_location="cpu", weights_only=True)
        if feats["image"].shape[0] != len(dataset.records):
            raise ValueError(f"feature cache {cache_path} holds {feats['image'].shape[0]} images, the dataset "
                             f"{len(dataset.records)}; delete the cache file to rebuild it")
        return feats
    image_rows: list[torch.Tensor] = []
    for s in range(0, len(dataset.records), batch_size):
        image_rows.append(encode_images([_open(r.image) for r in dataset.records[s:s + batch_size]]).cpu())
    pairs = dataset.all_captions
    texts = [c for _, c in pairs]
    text_rows = [encode_texts(texts[s:s + batch_size]).cpu() for s in range(0, len(texts), batch_size)]
    caption_rows: list[list[int]] = [[] for _ in dataset.records]
    for row, (rec, _) in enumerate(pairs):
        caption_rows[rec].append(row)
    feats = {"image": torch.cat(image_rows), "text": torch.cat(text_rows), "caption_rows": caption_rows}
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(feats, cache_path)
    return feats
