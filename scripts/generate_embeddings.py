"""Step 1 of the embedding alignment: paired post-projector embeddings of two LLaVA models.

    python scripts/generate_embeddings.py --model_7b llava-hf/llava-1.5-7b-hf \
        --model_13b llava-hf/llava-1.5-13b-hf --images_dir /path/to/images --output_dir /path/to/embeddings

Writes ``X.npy`` (7B), ``y.npy`` (13B) and ``manifest.json`` to ``--output_dir``; rerunning the same
command after an interruption resumes. Checkpoints may be transformers' llava-hf models or this
project's (full, or LoRA / projector-only with ``--model_base_7b`` / ``--model_base_13b``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava.embedding_alignment.generate import POOLINGS, GenerateConfig, generate_embeddings  # noqa: E402
from llava.embedding_alignment.store import STORAGE_DTYPES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (seed 000 plus the issue's additions)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_7b", required=True, help="X model: checkpoint folder or hub id (smaller model)")
    p.add_argument("--model_13b", required=True, help="y model: checkpoint folder or hub id (target space)")
    p.add_argument("--images_dir", required=True, help="image folder; category = first sub-folder")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--model_base_7b", default=None, help="base LLM for a LoRA / projector-only --model_7b")
    p.add_argument("--model_base_13b", default=None, help="base LLM for a LoRA / projector-only --model_13b")
    p.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    p.add_argument("--pooling", choices=POOLINGS, default="none",
                   help="none: one row per image with all T tokens; mean: one mean-pooled vector per image")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model compute dtype (auto: float16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--storage_dtype", choices=STORAGE_DTYPES, default="float16", help="dtype of X.npy / y.npy")
    p.add_argument("--num_workers", type=int, default=2, help="image-decoding threads")
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    p.add_argument("--allow_preprocess_mismatch", action="store_true",
                   help="accept models whose image processors differ (both still get --model_7b's pixels)")
    p.add_argument("--export_pt", action="store_true", help="also write embeddings.pt (small datasets only)")
    p.add_argument("--commit_every_s", type=float, default=10.0,
                   help="commit rows to manifest.json at most this often (0: every batch); a crash loses less")
    p.add_argument("--stop_after_batches", type=int, default=None,
                   help="stop after N batches (work in chunks; rerun to continue)")
    p.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run generation; prints a one-line summary. Returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = GenerateConfig(**{k: v for k, v in vars(args).items() if k != "no_progress"}, progress=not args.no_progress)
    manifest = generate_embeddings(cfg)
    print(f"{manifest['status']}: {manifest['num_rows']} rows in {args.output_dir} "
          f"(X {manifest['arrays']['X']['row_shape']}, y {manifest['arrays']['y']['row_shape']}, "
          f"{manifest['storage_dtype']}); {len(manifest['skipped'])} unreadable images skipped")
    for item in manifest["skipped"]:
        print(f"  skipped {item['path']}: {item['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
