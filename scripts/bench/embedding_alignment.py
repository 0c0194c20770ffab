"""Benchmark (not a test): MLP-alignment training throughput and peak RSS from an on-disk dataset.

Writes a synthetic embedding dataset (``X``/``y`` memmaps + manifest, via the same writer as
``generate_embeddings``; y = a fixed non-linear function of X) whose size is a multiple of the RSS the
trainer needs, then runs ``train_mlp`` in a fresh child process and reports, for that process:
streaming read rate (rows/s, no compute), training throughput (pairs/s), and peak RSS (``ru_maxrss``)
next to the dataset size. Dataset creation runs in its own child so its dirty pages are not counted.

    python scripts/bench/embedding_alignment.py [--num_images 1800 --tokens 576 --d_in 256 --d_out 320]
    python scripts/bench/embedding_alignment.py --d_in 4096 --d_out 5120 --num_images 800 --device cuda

Numbers depend on the page cache: the dataset was just written, so reads mostly hit memory, not disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402


def make_dataset(out: Path, num_images: int, tokens: int, d_in: int, d_out: int, seed: int = 0) -> int:
    """Write the synthetic dataset in chunks of images; returns its size in bytes."""
    from llava.embedding_alignment.store import EmbeddingWriter

    rng = np.random.default_rng(seed)
    mix = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
    x_row, y_row = ((tokens, d_in), (tokens, d_out)) if tokens > 1 else ((d_in,), (d_out,))
    writer = EmbeddingWriter.create(out, {"pooling": "none" if tokens > 1 else "mean", "synthetic": True},
                                    num_images, x_row, y_row, "float16")
    cats = ("indoor", "outdoor", "people", "text")
    chunk = max(1, (64 << 20) // (tokens * (d_in + d_out) * 4))
    for i in range(0, num_images, chunk):
        n = min(chunk, num_images - i)
        x = rng.standard_normal((n * tokens, d_in), dtype=np.float32)
        y = np.tanh(x @ mix) + 0.05 * rng.standard_normal((n * tokens, d_out), dtype=np.float32)
        recs = [{"path": f"{cats[j % 4]}/{j}.png", "category": cats[j % 4]} for j in range(i, i + n)]
        writer.commit(x.reshape(n, *x_row).astype(np.float16), y.reshape(n, *y_row).astype(np.float16), recs, [],
                      i + n)
    writer.finalize()
    return sum((out / f).stat().st_size for f in ("X.npy", "y.npy"))


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_train(args: argparse.Namespace) -> dict:
    """Child process: read-only streaming pass, then ``train_mlp``; returns the measurements."""
    import torch

    from llava.embedding_alignment.store import EmbeddingPairs
    from llava.embedding_alignment.train import TrainConfig, iter_batches, split_by_image, train_mlp

    if args.threads:
        torch.set_num_threads(args.threads)
    rss_after_import = peak_rss_mib()
    pairs = EmbeddingPairs(args.dataset)
    train_rows, _ = split_by_image(pairs.image_category_ids, args.val_fraction, 0)
    t0, rows = time.perf_counter(), 0
    for xb, _, _ in iter_batches(pairs, train_rows, args.batch_size, np.random.default_rng(0), args.buffer_rows):
        rows += len(xb)
    read_s = time.perf_counter() - t0
    pairs.close()
    rss_after_read = peak_rss_mib()
    t0 = time.perf_counter()
    report = train_mlp(TrainConfig(args.dataset, args.output, epochs=args.epochs, batch_size=args.batch_size,
                                   lr=1e-3, device=args.device, val_fraction=args.val_fraction,
                                   shuffle_buffer_rows=args.buffer_rows, max_steps_per_epoch=args.max_steps,
                                   eval_train_at_end=False,
                                   progress=False))
    return {"stream_rows_per_s": rows / read_s, "stream_rows": rows, "train_pairs_per_s": report["mean_pairs_per_s"],
            "train_wall_s": time.perf_counter() - t0, "val_cosine": report["val"]["cosine"],
            "rss_after_import_mib": rss_after_import, "rss_after_stream_mib": rss_after_read,
            "peak_rss_mib": peak_rss_mib(), "device": report["device"], "bf16": report["bf16"]}


def main() -> None:
    """Parent: build the dataset in one child, train in another, print a summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=1800)
    p.add_argument("--tokens", type=int, default=576, help="tokens per image (1 = mean-pooled rows)")
    p.add_argument("--d_in", type=int, default=256)
    p.add_argument("--d_out", type=int, default=320)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--buffer_rows", type=int, default=8192)
    p.add_argument("--val_fraction", type=float, default=0.15)
    p.add_argument("--max_steps", type=int, default=None, help="cap training steps per epoch")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--workdir", default=None, help="where to write the dataset (default: a temp dir)")
    p.add_argument("--stage", choices=["all", "make", "train"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage == "make":
        print(json.dumps({"bytes": make_dataset(Path(args.dataset), args.num_images, args.tokens, args.d_in,
                                                args.d_out)}))
        return
    if args.stage == "train":
        print(json.dumps(stage_train(args)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        ds, out = Path(tmp, "ds"), Path(tmp, "mlp")
        forward = [a for a in sys.argv[1:] if not a.startswith("--stage")]
        t0 = time.perf_counter()
        made = subprocess.run([sys.executable, __file__, *forward, "--stage", "make", "--dataset", str(ds)],
                              check=True, capture_output=True, text=True)
        size = json.loads(made.stdout.strip().splitlines()[-1])["bytes"]
        make_s = time.perf_counter() - t0
        run = subprocess.run([sys.executable, __file__, *forward, "--stage", "train", "--dataset", str(ds),
                              "--output", str(out)], check=True, capture_output=True, text=True)
        res = json.loads(run.stdout.strip().splitlines()[-1])
    gib = size / 2**30
    print(f"dataset: {args.num_images} images x {args.tokens} tokens, d_in {args.d_in} -> d_out {args.d_out}, "
          f"float16: {gib:.2f} GiB on disk (written in {make_s:.0f} s)")
    print(f"streaming read (no compute): {res['stream_rows_per_s']:,.0f} rows/s over {res['stream_rows']:,} rows")
    print(f"training: {res['train_pairs_per_s']:,.0f} pairs/s (batch {args.batch_size}, {args.epochs} epoch(s)); "
          f"wall {res['train_wall_s']:.0f} s; val cosine {res['val_cosine']:.3f}")
    print(f"peak RSS: {res['peak_rss_mib']:.0f} MiB (after imports {res['rss_after_import_mib']:.0f} MiB, after "
          f"streaming pass {res['rss_after_stream_mib']:.0f} MiB); dataset / peak RSS = "
          f"{size / 2**20 / res['peak_rss_mib']:.1f}x")


if __name__ == "__main__":
    main()
