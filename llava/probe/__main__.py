"""CLI of the projection probe (arXiv 2402.16832).

    python -m llava.probe --checkpoints CKPT [CKPT ...] [--names A B] [--model-base BASE] \\
        --image-folder LABELLED_DIR --output-dir OUT [--pooling mean tokens] [--folds 5] \\
        [--hidden-layers 5] [--hidden-size 256] [--max-epochs 200] [--patience 15] [--device cpu]

``LABELLED_DIR`` holds one sub-folder per class (e.g. ``CT/``, ``MRI/``, ``X-Ray/``). For every checkpoint
(a full LLaVA model, a projector-only stage output with ``--model-base``, or a LoRA folder with
``--model-base``), features before and after the projector are pooled (``mean``: mean over image tokens;
``tokens``: all tokens concatenated, which keeps where each token came from) and an MLP is trained on them
with stratified k-fold cross-validation. Written to ``--output-dir``: ``probe.md`` (macro-F1 and accuracy,
mean ± std over folds, one row per checkpoint and representation, with the majority-class baseline),
``probe.json`` (per-fold values) and ``probe.png``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from llava.probe.classifier import ProbeSettings, cross_validate
from llava.probe.features import POOLINGS, extract_features, list_labelled_images, load_checkpoint


def _ms(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarize(folds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per-fold lists -> ``{<metric>_mean, <metric>_std}`` (sample std)."""
    out = {}
    for k, v in folds.items():
        out[f"{k}_mean"], out[f"{k}_std"] = _ms(v)
    return out


def report_markdown(rows: Sequence[Mapping[str, Any]], classes: Sequence[str], n_images: int,
                    settings: ProbeSettings) -> str:
    """One row per (checkpoint, representation): dim, macro-F1 and accuracy (mean ± std), majority baseline."""
    lines = [f"Probe: {len(classes)} classes ({', '.join(classes)}), {n_images} images, {settings.folds}-fold CV, "
             f"MLP {settings.hidden_layers}x{settings.hidden_size} ReLU. Values are mean ± std over folds.", "",
             "| checkpoint | representation | dim | macro-F1 | accuracy | majority macro-F1 | majority accuracy |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        lines.append(f"| {r['checkpoint']} | {r['representation']} | {r['dim']} | "
                     f"{s['f1_mean']:.3f} ± {s['f1_std']:.3f} | {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} | "
                     f"{s['majority_f1_mean']:.3f} | {s['majority_accuracy_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Macro-F1 per checkpoint (groups) and representation (bars), fold std as error bars, majority as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ckpts = list(dict.fromkeys(r["checkpoint"] for r in rows))
    reps = list(dict.fromkeys(r["representation"] for r in rows))
    width = 0.8 / len(reps)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(ckpts) * len(reps) / 2 + 2), 3.5))
    for j, rep in enumerate(reps):
        sel = {r["checkpoint"]: r["summary"] for r in rows if r["representation"] == rep}
        xs = [i + j * width for i in range(len(ckpts))]
        ax.bar(xs, [sel[c]["f1_mean"] for c in ckpts], width, yerr=[sel[c]["f1_std"] for c in ckpts], capsize=3,
               label=rep)
    ax.axhline(max(r["summary"]["majority_f1_mean"] for r in rows), color="gray", ls="--", label="majority")
    ax.set_xticks([i + width * (len(reps) - 1) / 2 for i in range(len(ckpts))], ckpts, fontsize=8)
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_probe(checkpoints: Sequence[str], names: Sequence[str], image_folder: str, output_dir: str,
              model_base: str | None = None, poolings: tuple[str, ...] = ("mean",),
              settings: ProbeSettings | None = None, device: str = "cpu", batch_size: int = 16) -> list[dict[str, Any]]:
    """Extract, cross-validate and report; returns the rows written to ``probe.json``."""
    settings = settings or ProbeSettings()
    paths, labels, classes = list_labelled_images(image_folder)
    y = torch.tensor(labels)
    rows: list[dict[str, Any]] = []
    for ckpt, name in zip(checkpoints, names, strict=True):
        model, processor = load_checkpoint(ckpt, model_base, device)
        feats = extract_features(model, processor, paths, poolings, batch_size)
        del model
        for rep, x in feats.items():
            folds = cross_validate(x, y, len(classes), settings)
            rows.append({"checkpoint": name, "path": ckpt, "representation": rep, "dim": int(x.shape[1]),
                         "folds": folds, "summary": summarize(folds)})
            print(f"[probe] {name} {rep}: macro-F1 {rows[-1]['summary']['f1_mean']:.3f}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"classes": classes, "n_images": len(paths), "settings": settings.__dict__, "rows": rows}
    (out / "probe.json").write_text(json.dumps(meta, indent=1))
    table = report_markdown(rows, classes, len(paths), settings)
    (out / "probe.md").write_text(table)
    plot(rows, out / "probe.png")
    print(table)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    d = ProbeSettings()
    p = argparse.ArgumentParser(prog="python -m llava.probe", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--names", nargs="+", default=None, help="report label per checkpoint (default: folder name)")
    p.add_argument("--model-base", default=None, help="base LLM for projector-only / LoRA checkpoints")
    p.add_argument("--image-folder", required=True, help="one sub-folder per class")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--pooling", nargs="+", default=["mean"], choices=POOLINGS)
    p.add_argument("--folds", type=int, default=d.folds)
    p.add_argument("--hidden-layers", type=int, default=d.hidden_layers)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--train-batch-size", type=int, default=d.batch_size)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=16, help="images per feature-extraction batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.names or [Path(c).name for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        raise SystemExit(f"--names has {len(names)} entries but --checkpoints has {len(args.checkpoints)}")
    settings = ProbeSettings(hidden_layers=args.hidden_layers, hidden_size=args.hidden_size, lr=args.lr,
                             max_epochs=args.max_epochs, patience=args.patience, batch_size=args.train_batch_size,
                             val_fraction=args.val_fraction, folds=args.folds, seed=args.seed)
    run_probe(args.checkpoints, names, args.image_folder, args.output_dir, args.model_base, tuple(args.pooling),
              settings, args.device, args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
