"""Benchmark (not a test): dataset doctor throughput in samples/s, with and without image decoding.

Builds a synthetic LLaVA-format set in a temp dir (small JPEG/PNG images with coloured shapes, one
per image sample; 1-3 question/answer rounds; a share of text-only samples), the tiny
sentencepiece tokenizer from ``llava.testing.tiny_models``, then times
:func:`llava.data.doctor.run_checks` (the whole check: shape, roles, placeholders, template masking
through ``llava.data.preprocess``, token length, image existence + decode or verify) for each
worker count.

    python scripts/bench/doctor.py [--num_samples 5000] [--image_size 64] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square"]


def make_set(root: Path, num_samples: int, image_size: int, image_fraction: float, seed: int = 0) -> Path:
    """Write ``num_samples`` samples (and their images under ``root/images``); return the data file."""
    rng = random.Random(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    samples = []
    for i in range(num_samples):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns.append({"from": "human", "value": f"what colour is the {shape}? answer in a sentence."})
            turns.append({"from": "gpt", "value": f"the {shape} is {colour}, at the top left of the picture."})
        sample = {"id": f"syn-{i}", "conversations": turns}
        if rng.random() < image_fraction:
            img = Image.new("RGB", (image_size, image_size), "gray")
            box = (image_size // 8, image_size // 8, image_size // 2, image_size // 2)
            draw = ImageDraw.Draw(img)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
            name = f"{i}.jpg" if i % 4 else f"{i}.png"
            img.save(image_dir / name)
            sample["image"] = name
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        samples.append(sample)
    data_path = root / "data.json"
    data_path.write_text(json.dumps(samples))
    return data_path


def main(argv: list[str] | None = None) -> None:
    """Build the set once, then print samples/s for each (workers, decode) combination."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--image_fraction", type=float, default=0.9)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    args = parser.parse_args(argv)

    from llava.data.dataset import load_data_file
    from llava.data.doctor import DoctorConfig, _load_tokenizer, run_checks
    from llava.testing.tiny_models import build_tokenizer

    with tempfile.TemporaryDirectory(prefix="doctor_bench_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        data_path = make_set(root, args.num_samples, args.image_size, args.image_fraction)
        build_tokenizer(root / "tokenizer")
        records = load_data_file(str(data_path))
        n_images = sum("image" in s for s in records)
        print(f"synthetic set: {len(records)} samples, {n_images} images of {args.image_size}px "
              f"(built in {time.perf_counter() - t0:.1f}s); cpu_count={os.cpu_count()}")
        _load_tokenizer(str(root / "tokenizer"))  # warm: loaded once, inherited by forked workers
        print(f"{'workers':>7}  {'images':<8}  {'seconds':>8}  {'samples/s':>10}  problems")
        for workers in args.workers:
            for decode in (False, True):
                cfg = DoctorConfig(tokenizer=str(root / "tokenizer"), version="v1", model_max_length=2048,
                                   image_folder=str(root / "images"), num_image_tokens=576, decode=decode)
                start = time.perf_counter()
                found = run_checks(records, cfg, workers=workers, progress=False)
                elapsed = time.perf_counter() - start
                mode = "decode" if decode else "verify"
                print(f"{workers:>7}  {mode:<8}  {elapsed:>8.2f}  {len(records) / elapsed:>10.0f}  {len(found)}")


if __name__ == "__main__":
    main()
