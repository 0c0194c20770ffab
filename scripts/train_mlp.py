"""Step 2 of the embedding alignment: train the 7B -> 13B MLP on a generated embedding dataset.

    python scripts/train_mlp.py --dataset_path /path/to/embeddings --output_dir /path/to/mlp_checkpoint \
        --epochs 100 --batch_size 256

Writes ``mlp.safetensors`` + ``mlp_config.json`` (best epoch by validation cosine), ``metrics.csv``,
``metrics.json``, ``curves.png``, ``report.json`` and ``report.md`` to ``--output_dir``, and
``train_state.pt`` after every epoch: an interrupted run resumes when rerun with the same settings; a
finished run is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava.embedding_alignment.train import RunExistsError, TrainConfig, format_report, train_mlp  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (seed 000 plus the issue's additions)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_path", required=True, help="--output_dir of scripts/generate_embeddings.py")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=256, help="embedding pairs (tokens) per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW LR, cosine-annealed to 0")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--val_fraction", type=float, default=0.15, help="held-out share of images, per category")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    p.add_argument("--no_bf16", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--hidden_dim", type=int, default=None, help="MLP hidden width (default: d_out)")
    p.add_argument("--mse_weight", type=float, default=0.0,
                   help="add mse_weight * MSE to the cosine loss (0 = the seed's loss; cosine ignores scale)")
    p.add_argument("--shuffle_buffer_rows", type=int, default=8192, help="rows read and shuffled per window")
    p.add_argument("--max_steps_per_epoch", type=int, default=None, help="cap steps per epoch (smoke runs)")
    p.add_argument("--no_final_train_eval", action="store_true",
                   help="report the best epoch's running train metrics instead of a final pass over the train split")
    p.add_argument("--no_progress", action="store_true", help="hide the tqdm bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run (or an interrupted one) in --output_dir instead of refusing / resuming")
    p.add_argument("--stop_after_epochs", type=int, default=None,
                   help="train this many epochs in this call, then stop (rerun the command to resume)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Train and print the report; exit code 0 whether or not the targets are met."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    skip = ("no_progress", "no_final_train_eval")
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k not in skip}, progress=not args.no_progress,
                      eval_train_at_end=not args.no_final_train_eval)
    try:
        report = train_mlp(cfg)
    except RunExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "stopped_after_epoch" in report:
        print(f"stopped after epoch {report['stopped_after_epoch']} of {cfg.epochs}; rerun the same command to resume")
        return 0
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
