"""Benchmark (not a test): data-pipeline samples/s for one worker.

Builds a synthetic LLaVA-format set in a temp dir (PNG images of COCO-like sizes with coloured
shapes, multi-turn v1 conversations, a share of text-only samples), the tiny sentencepiece tokenizer
and a CLIP image processor from ``llava.testing.tiny_models``, then times
``LazySupervisedDataset.__getitem__`` in the main process: image load + pad/square + CLIP
preprocess + render template + tokenize + mask.

    python scripts/bench/data_pipeline.py [--num_samples 300] [--image_size 336] [--aspect pad]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square"]


def make_synthetic_set(
    root: Path, num_samples: int, image_fraction: float, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``num_samples`` LLaVA-format samples (and their images) under ``root``."""
    rng = random.Random(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    samples = []
    for i in range(num_samples):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        turns = [
            {"from": "human", "value": "what shape is in the image? answer with one word."},
            {"from": "gpt", "value": shape},
            {"from": "human", "value": "what colour is the shape?"},
            {"from": "gpt", "value": f"the {shape} is {colour}, located at the top left of the picture."},
        ]
        sample = {"id": f"syn-{i}", "conversations": turns}
        if rng.random() < image_fraction:
            w, h = rng.choice([(640, 480), (500, 375), (480, 640), (640, 427)])
            img = Image.new("RGB", (w, h), "gray")
            draw = ImageDraw.Draw(img)
            box = (w // 8, h // 8, w // 3, h // 3)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
            img.save(image_dir / f"{i}.png")
            sample["image"] = f"{i}.png"
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        samples.append(sample)
    data_path = root / "data.json"
    data_path.write_text(json.dumps(samples))
    return data_path, image_dir


def main(argv: list[str] | None = None) -> None:
    """Build the synthetic set and print samples/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=300)
    parser.add_argument("--image_fraction", type=float, default=0.8)
    parser.add_argument("--image_size", type=int, default=336, help="CLIP processor crop size (336 = v1.5)")
    parser.add_argument("--aspect", choices=["pad", "square"], default="pad")
    parser.add_argument("--template", default="v1")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from llava.data.supervised import make_supervised_data_module
    from llava.testing.tiny_models import build_clip, build_tokenizer
    from llava.train.arguments import DataArguments
    from llava.utils.image_processor import load_image_processor

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tokenizer(root / "tok")
        build_clip(root / "clip", num_layers=1, image_size=args.image_size, patch_size=14)
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tok"))
        processor = load_image_processor(str(root / "clip"))
        data_path, image_dir = make_synthetic_set(root / "data", args.num_samples, args.image_fraction)

        data_args = DataArguments(
            data_path=str(data_path),
            image_folder=str(image_dir),
            is_multimodal=True,
            image_aspect_ratio=args.aspect,
        )
        data_args.image_processor = processor
        data_args.conv_version = args.template
        data_args.num_image_tokens = (args.image_size // 14) ** 2
        dataset = make_supervised_data_module(tokenizer, data_args)["train_dataset"]

        for i in range(min(10, len(dataset))):  # warm-up
            dataset[i]
        start = time.perf_counter()
        n_tokens = 0
        for i in range(len(dataset)):
            n_tokens += int(dataset[i]["input_ids"].numel())
        elapsed = time.perf_counter() - start

    rate = len(dataset) / elapsed
    print(
        f"data pipeline, 1 worker: {rate:.1f} samples/s  ({len(dataset)} samples, "
        f"{args.image_fraction:.0%} with images, {args.image_size}px {args.aspect}, "
        f"template {args.template}, "
        f"{n_tokens / len(dataset):.0f} text tokens/sample, {elapsed:.2f}s)"
    )


if __name__ == "__main__":
    main()
