"""Phase-1 training loop and retrieval evaluation (recall@k at every Matryoshka dimension, table, plot)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llava.contrastive.core import VisionTextAligner
from llava.contrastive.data import ImageTextDataset, _open

logger = logging.getLogger(__name__)


def _cosine_lambda(total: int, warmup: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def train_alignment(model: VisionTextAligner, loader: DataLoader, num_epochs: int | None = None,
                    lr: float | None = None, log_every: int = 10,
                    eval_dataset: ImageTextDataset | None = None) -> dict[str, Any]:
    """Train the adapters and temperature with the Matryoshka CLIP loss; the encoders stay frozen.

    AdamW (``cfg.lr``, ``cfg.weight_decay``; no decay on the temperature), linear warmup then cosine,
    gradient clipping, and CLIP's in-place clamp of the log-scale after every step. Returns the history:
    ``step_loss`` (per step), ``epoch_loss``, ``epoch_per_dim`` ({dim: [per epoch]}), ``scale``,
    ``seconds`` and, with ``eval_dataset``, ``eval`` (one :func:`evaluate_retrieval` result per epoch).
    """
    cfg = model.cfg
    num_epochs = cfg.num_epochs if num_epochs is None else num_epochs
    lr = cfg.lr if lr is None else lr
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight") and p.ndim > 1
             and not n.startswith(("vision_encoder.", "text_encoder."))]
    ids = {id(p) for p in decay}
    no_decay = [p for p in model.trainable_parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    total = max(1, num_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_lambda(total, cfg.warmup_steps))
    hist: dict[str, Any] = {"step_loss": [], "epoch_loss": [], "epoch_per_dim": {m: [] for m in cfg.matryoshka_dims},
                            "scale": [], "eval": []}
    start, step = time.perf_counter(), 0
    for epoch in range(num_epochs):
        model.train()
        sums, n_batches = 0.0, 0
        dim_sums = dict.fromkeys(cfg.matryoshka_dims, 0.0)
        for batch in loader:
            out = model(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            model.clamp_logit_scale()
            loss = float(out["loss"].detach())
            hist["step_loss"].append(loss)
            sums += loss
            n_batches += 1
            for m, v in out["per_dim"].items():
                dim_sums[m] += float(v)
            if log_every and step % log_every == 0:
                logger.info("epoch %d step %d loss %.4f scale %.2f", epoch, step, loss, float(out["scale"]))
            step += 1
        hist["epoch_loss"].append(sums / max(1, n_batches))
        for m in cfg.matryoshka_dims:
            hist["epoch_per_dim"][m].append(dim_sums[m] / max(1, n_batches))
        hist["scale"].append(float(model.scale().detach()))
        if eval_dataset is not None:
            hist["eval"].append(evaluate_retrieval(model, eval_dataset))
    hist["seconds"] = time.perf_counter() - start
    return hist


def recall_at_k(sim: torch.Tensor, caption_image_index: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
                ) -> dict[str, float]:
    """Recall@k from an image-by-caption similarity matrix ``sim`` (N_img, N_cap).

    i2t: an image is a hit when any of its captions ranks in the top k of its row; t2i: a caption is a
    hit when its image ranks in the top k of its column. Rank = number of non-positive items scoring >= the positive, so
    ties count against the positive (a constant embedding scores 0, not 100). Values are percentages.
    """
    owner = caption_image_index.to(sim.device).long()
    n_img, n_cap = sim.shape
    pos = torch.zeros(n_img, n_cap, dtype=torch.bool, device=sim.device)
    pos[owner, torch.arange(n_cap, device=sim.device)] = True
    best_pos = sim.masked_fill(~pos, float("-inf")).max(dim=1).values  # (N_img,)
    i2t_rank = ((sim >= best_pos[:, None]) & ~pos).sum(dim=1)
    t2i_pos = sim[owner, torch.arange(n_cap, device=sim.device)]  # (N_cap,)
    t2i_rank = ((sim >= t2i_pos[None, :]) & ~pos).sum(dim=0)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float((i2t_rank < k).float().mean())
        out[f"t2i_R@{k}"] = 100.0 * float((t2i_rank < k).float().mean())
    return out


@torch.no_grad()
def embed_dataset(model: VisionTextAligner, dataset: ImageTextDataset, batch_size: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Aligned embeddings of every image and every caption of ``dataset`` and each caption's image row."""
    model.eval()
    feats = dataset.features
    if feats is not None:
        img = torch.cat([model.embed_images(features=feats["image"][s:s + batch_size])
                         for s in range(0, len(dataset.records), batch_size)])
        txt = torch.cat([model.embed_texts(features=feats["text"][s:s + batch_size])
                         for s in range(0, feats["text"].shape[0], batch_size)])
    else:
        img = torch.cat([model.embed_images([_open(r.image) for r in dataset.records[s:s + batch_size]])
                         for s in range(0, len(dataset.records), batch_size)])
        texts = [c for _, c in dataset.all_captions]
        txt = torch.cat([model.embed_texts(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)])
    owner = torch.tensor([i for i, _ in dataset.all_captions], dtype=torch.long)
    return img.cpu(), txt.cpu(), owner


@torch.no_grad()
def evaluate_retrieval(model: VisionTextAligner, dataset: ImageTextDataset, dims: Sequence[int] | None = None,
                       ks: Sequence[int] = (1, 5, 10), batch_size: int = 64) -> dict[str, Any]:
    """Recall@k (i2t and t2i, all captions of every image) at each Matryoshka dim (re-normalised prefixes).

    Returns ``{"num_images", "num_captions", "chance_i2t_R@1", "dims": {dim: {"i2t_R@1": ..., ...}}}``.
    """
    was_training = model.training
    img, txt, owner = embed_dataset(model, dataset, batch_size)
    dims = list(dims or model.cfg.matryoshka_dims)
    result: dict[str, Any] = {"num_images": img.shape[0], "num_captions": txt.shape[0], "dims": {}}
    counts = torch.bincount(owner, minlength=img.shape[0]).float()
    result["chance_i2t_R@1"] = 100.0 * float((counts / txt.shape[0]).mean())
    for m in dims:
        sim = F.normalize(img[:, :m], dim=-1) @ F.normalize(txt[:, :m], dim=-1).T
        result["dims"][int(m)] = recall_at_k(sim, owner, ks)
    model.train(was_training)
    return result


def format_retrieval_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per dim, columns i2t R@k then t2i R@k (percent, 1 decimal)."""
    dims = sorted(result["dims"], key=int)
    cols = list(result["dims"][dims[0]])
    cols = [c for c in cols if c.startswith("i2t")] + [c for c in cols if c.startswith("t2i")]
    lines = ["| dim | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    for d in dims:
        lines.append(f"| {d} | " + " | ".join(f"{result['dims'][d][c]:.1f}" for c in cols) + " |")
    lines.append("")
    lines.append(f"{result['num_images']} images, {result['num_captions']} captions; "
                 f"chance i2t R@1 = {result['chance_i2t_R@1']:.1f}%")
    return "\n".join(lines)


def plot_recall_vs_dim(result: dict[str, Any], path: str | os.PathLike) -> str:
    """Save a recall-vs-dimension line plot (matplotlib if importable, else a Pillow drawing); returns the backend."""
    dims = sorted(result["dims"], key=int)
    series = {c: [result["dims"][d][c] for d in dims] for c in result["dims"][dims[0]]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _pillow_plot(dims, series, path)
        return "pillow"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(dims, ys, marker="o", linestyle="-" if name.startswith("i2t") else "--", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding dimension (Matryoshka prefix)")
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Recall@k vs dimension")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def _pillow_plot(dims: list[int], series: dict[str, list[float]], path: str | os.PathLike) -> None:
    from PIL import Image, ImageDraw

    w, h, pad = 640, 400, 50
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.rectangle((pad, pad, w - pad, h - pad), outline="black")
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (w - 2 * pad) * (i / max(1, len(dims) - 1))
        return x, h - pad - (h - 2 * pad) * v / 100.0

    for i, dim in enumerate(dims):
        d.text((xy(i, 0)[0] - 8, h - pad + 5), str(dim), fill="black")
    for n, (name, ys) in enumerate(series.items()):
        col = colours[n % len(colours)]
        pts = [xy(i, v) for i, v in enumerate(ys)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        d.text((pad + 5 + 90 * (n % 6), 8 + 14 * (n // 6)), name, fill=col)
    d.text((w // 2 - 60, h - 20), "dimension; y: recall % (0-100)", fill="black")
    im.save(path)
