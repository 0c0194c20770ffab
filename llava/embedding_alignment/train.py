"""Step 2: train the alignment MLP on a precomputed embedding dataset, streaming from disk.

* Split by image (stratified by category, seeded): all tokens of one image are on the same side.
* Batches are streamed: a shuffled window of ``shuffle_buffer_rows`` rows (whole images, read with
  positioned reads) is shuffled in memory and cut into batches, with a background thread reading the
  next window; memory is bounded by the window, not the dataset.
* Loss ``1 - cos(MLP(x), y)`` (+ optional ``mse_weight * MSE``), AdamW, cosine-annealed LR per step,
  bf16 autocast on CUDA. Only the MLP has parameters.
* Every epoch: train metrics (running, over the epoch's batches) and validation metrics (eval mode);
  the best epoch by validation cosine is saved with its config; ``metrics.csv`` / ``metrics.json`` /
  ``curves.png`` are rewritten each epoch; ``report.json`` / ``report.md`` at the end compare the best
  checkpoint's validation metrics with the seed's targets.
* Reruns never mix or lose work: a folder with a finished run (``report.json``) is refused unless
  ``overwrite``; an interrupted run (``train_state.pt``, written atomically after every epoch: weights,
  optimizer, schedule, torch RNG, history, best epoch) resumes at its next epoch when the settings match
  (else the differing settings are listed), ending bit-identical to an uninterrupted run. Each epoch
  shuffles with its own generator (seed, epoch), so the order never depends on how far the reading
  thread got. ``stop_after_epochs`` ends a run early on purpose (e.g. a cluster job's time limit).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .metrics import MetricAccumulator, Targets, check_targets, cosine_rows
from .mlp import AlignmentMLP, load_mlp, save_mlp
from .models import resolve_device
from .plot import plot_curves, write_curves_csv
from .store import EmbeddingPairs, atomic_write_json

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class TrainConfig:
    """Flags of ``scripts/train_mlp.py`` (see its ``--help``)."""

    dataset_path: str
    output_dir: str
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    no_bf16: bool = False
    hidden_dim: int | None = None
    mse_weight: float = 0.0
    shuffle_buffer_rows: int = 8192
    max_steps_per_epoch: int | None = None
    eval_train_at_end: bool = True
    progress: bool = True
    overwrite: bool = False
    stop_after_epochs: int | None = None


STATE_FILE = "train_state.pt"
NOT_SETTINGS = ("progress", "overwrite", "stop_after_epochs")  # may change between a run and its resume


class RunExistsError(ValueError):
    """``output_dir`` holds a finished run, or an interrupted one made with other settings."""


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}


def check_output_dir(cfg: TrainConfig) -> dict[str, Any] | None:
    """The interrupted run's saved state to resume from, None for a fresh start; raises :class:`RunExistsError`."""
    out = Path(cfg.output_dir)
    if cfg.overwrite:
        return None
    if (out / "report.json").is_file():
        report = json.loads((out / "report.json").read_text())
        cos = report.get("val", {}).get("cosine", float("nan"))
        raise RunExistsError(
            f"{out} already holds a finished run (best val cosine {cos:.4f} at epoch {report.get('best_epoch')} of "
            f"{report.get('epochs')}); pass --overwrite to replace it, or choose another --output_dir")
    if not (out / STATE_FILE).is_file():
        return None
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    diff = {k: (state["settings"].get(k), v) for k, v in _settings(cfg).items() if state["settings"].get(k) != v}
    if diff:
        listed = ", ".join(f"--{k} {old!r} -> {new!r}" for k, (old, new) in sorted(diff.items()))
        raise RunExistsError(f"{out} holds an interrupted run made with other settings ({listed}); rerun with the same "
                             "settings to resume it, pass --overwrite to start over, or choose another --output_dir")
    return state


def split_by_image(category_ids: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out of whole images: ``round(val_fraction * n)`` per category, at least one when
    the category has two or more images, never all of them. Returns sorted ``(train_rows, val_rows)``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for cat in np.unique(category_ids):
        rows = rng.permutation(np.flatnonzero(category_ids == cat))
        n_val = min(max(int(round(val_fraction * len(rows))), 1), len(rows) - 1) if len(rows) > 1 else 0
        val.append(rows[:n_val])
    val_rows = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    if val_rows.size == 0:
        raise ValueError("the validation split is empty: every category has a single image; "
                         "add images or raise --val_fraction")
    return np.setdiff1d(np.arange(len(category_ids)), val_rows), val_rows


def iter_batches(pairs: EmbeddingPairs, image_rows: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                 buffer_rows: int) -> Iterator[Batch]:
    """Yield ``(x, y, category_ids)`` batches of ``batch_size`` token rows (the last may be smaller).

    With ``rng`` the image order and the rows inside each window are shuffled; without, order is kept.
    """
    order = rng.permutation(image_rows) if rng is not None else np.asarray(image_rows)
    per_window = max(1, buffer_rows // pairs.tokens_per_image)
    carry: Batch | None = None
    for start in range(0, len(order), per_window):
        x, y, c = pairs.read_pairs(np.sort(order[start:start + per_window]))
        if rng is not None:
            perm = rng.permutation(len(x))
            x, y, c = x[perm], y[perm], c[perm]
        if carry is not None:
            x, y, c = (np.concatenate([a, b]) for a, b in zip(carry, (x, y, c)))
        full = len(x) // batch_size * batch_size
        for i in range(0, full, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size], c[i:i + batch_size]
        carry = (x[full:], y[full:], c[full:]) if full < len(x) else None
    if carry is not None:
        yield carry


def _prefetch(it: Iterator[Batch], depth: int = 4) -> Iterator[Batch]:
    """Run ``it`` in a background thread (disk reads overlap compute); re-raises its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except Exception as err:  # handed to the consumer, which re-raises it
            q.put(err)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _loss(pred: torch.Tensor, target: torch.Tensor, mse_weight: float) -> torch.Tensor:
    loss = (1.0 - cosine_rows(pred, target)).mean()
    if mse_weight:
        loss = loss + mse_weight * torch.mean((pred - target) ** 2)
    return loss


@torch.no_grad()
def evaluate(mlp: AlignmentMLP, pairs: EmbeddingPairs, image_rows: np.ndarray, batch_size: int,
             device: torch.device, use_bf16: bool = False, buffer_rows: int = 8192) -> dict[str, Any]:
    """Cosine / MSE / alignment variance (overall and per category) of ``mlp`` on ``image_rows``."""
    mlp.eval()
    acc = MetricAccumulator(pairs.categories)
    for xb, yb, cb in _prefetch(iter_batches(pairs, image_rows, batch_size, None, buffer_rows)):
        x = torch.from_numpy(xb).to(device, torch.float32)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = mlp(x)
        acc.update(pred.float(), torch.from_numpy(yb).float(), cb)
    return acc.compute()


def _flat(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}_{k}": metrics[k] for k in ("cosine", "mse", "alignment_variance")}


def _train_epoch(mlp: AlignmentMLP, opt: torch.optim.Optimizer, sched: Any, pairs: EmbeddingPairs,
                 train_rows: np.ndarray, cfg: TrainConfig, epoch: int, steps: int, device: torch.device,
                 use_bf16: bool) -> tuple[dict[str, Any], float, int, float]:
    """One epoch: (train metrics, mean loss, pairs seen, seconds). Shuffled by its own (seed, epoch) generator."""
    mlp.train()
    acc = MetricAccumulator(pairs.categories)
    loss_sum, n_batches, n_pairs, t0 = 0.0, 0, 0, time.perf_counter()
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = _prefetch(iter_batches(pairs, train_rows, cfg.batch_size, rng, cfg.shuffle_buffer_rows))
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not cfg.progress)
    for xb, yb, cb in bar:
        x = torch.from_numpy(xb).to(device, torch.float32)
        y = torch.from_numpy(yb).to(device, torch.float32)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = mlp(x)
        loss = _loss(pred.float(), y, cfg.mse_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc.update(pred.detach().float(), y, cb)
        loss_sum += float(loss.detach())
        n_batches += 1
        n_pairs += len(xb)
        bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
        if n_batches >= steps:
            break
    bar.close()
    batches.close()
    return acc.compute(), loss_sum / max(n_batches, 1), n_pairs, time.perf_counter() - t0


def _save_state(out: Path, cfg: TrainConfig, epoch: int, mlp: AlignmentMLP, opt: Any, sched: Any,
                history: list[dict[str, Any]], best: tuple[float, int]) -> None:
    from llava.utils.atomic import atomic_torch_save

    atomic_torch_save(dict(settings=_settings(cfg), epoch=epoch, mlp=mlp.state_dict(), opt=opt.state_dict(),
                           sched=sched.state_dict(), torch_rng=torch.get_rng_state(), history=json.dumps(history),
                           best_cos=best[0], best_epoch=best[1]), out / STATE_FILE)


def train_mlp(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume), checkpoint the best epoch, write curves and the final report; returns the report
    (an early stop by ``stop_after_epochs`` returns ``{"stopped_after_epoch": N}`` instead)."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"--epochs and --batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    out = Path(cfg.output_dir)
    resume = check_output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    pairs = EmbeddingPairs(cfg.dataset_path)
    device = resolve_device(cfg.device)
    use_bf16 = device.type == "cuda" and not cfg.no_bf16 and torch.cuda.is_bf16_supported()
    train_rows, val_rows = split_by_image(pairs.image_category_ids, cfg.val_fraction, cfg.seed)
    atomic_write_json(out / "run_config.json", {**asdict(cfg), "device_resolved": str(device), "bf16": use_bf16,
                                                "train_images": len(train_rows), "val_images": len(val_rows),
                                                "dataset_manifest": pairs.manifest.get("models")})
    torch.manual_seed(cfg.seed)
    mlp = AlignmentMLP(pairs.d_in, pairs.d_out, cfg.hidden_dim).to(device)
    opt = torch.optim.AdamW(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(train_rows) * pairs.tokens_per_image / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps * cfg.epochs))
    history: list[dict[str, Any]] = []
    best_cos, best_epoch, first = -math.inf, 0, 1
    if resume is not None:
        mlp.load_state_dict(resume["mlp"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        torch.set_rng_state(resume["torch_rng"])
        history, best_cos, best_epoch = json.loads(resume["history"]), resume["best_cos"], resume["best_epoch"]
        first = resume["epoch"] + 1
        logger.info("resuming %s after epoch %d of %d", out, resume["epoch"], cfg.epochs)
    logger.info("training on %d images (%d rows), validating on %d images; %d steps/epoch on %s%s",
                len(train_rows), len(train_rows) * pairs.tokens_per_image, len(val_rows), steps, device,
                " with bf16 autocast" if use_bf16 else "")
    for epoch in range(first, cfg.epochs + 1):
        train, train_loss, n_pairs, train_s = _train_epoch(mlp, opt, sched, pairs, train_rows, cfg, epoch, steps,
                                                           device, use_bf16)
        val = evaluate(mlp, pairs, val_rows, cfg.batch_size, device, use_bf16, cfg.shuffle_buffer_rows)
        row = {"epoch": epoch, "lr": sched.get_last_lr()[0], "train_loss": train_loss,
               **_flat("train", train), **_flat("val", val), "train_seconds": train_s,
               "pairs_per_s": n_pairs / max(train_s, 1e-9),
               "train_per_category": train["per_category"], "val_per_category": val["per_category"]}
        history.append(row)
        if val["cosine"] > best_cos:
            best_cos, best_epoch = val["cosine"], epoch
            save_mlp(mlp, out, {"epoch": epoch, "val": {k: val[k] for k in ("cosine", "mse", "alignment_variance")},
                                "dataset_path": str(Path(cfg.dataset_path).resolve()), "tokens_per_image":
                                pairs.tokens_per_image, "pooling": pairs.manifest.get("pooling")})
        logger.info("epoch %d: loss %.4f train cos %.4f | val cos %.4f mse %.4g var %.3g | %.0f pairs/s", epoch,
                    row["train_loss"], row["train_cosine"], row["val_cosine"], row["val_mse"],
                    row["val_alignment_variance"], row["pairs_per_s"])
        atomic_write_json(out / "metrics.json", history)
        write_curves_csv(history, out / "metrics.csv")
        plot_curves(history, out / "curves.png")
        _save_state(out, cfg, epoch, mlp, opt, sched, history, (best_cos, best_epoch))
        if cfg.stop_after_epochs is not None and epoch - first + 1 >= cfg.stop_after_epochs and epoch < cfg.epochs:
            pairs.close()
            logger.info("stopped after epoch %d (--stop_after_epochs); rerun the same command to resume", epoch)
            return {"stopped_after_epoch": epoch}
    report = _final_report(cfg, pairs, train_rows, val_rows, history, best_epoch, device, use_bf16)
    atomic_write_json(out / "report.json", report)
    (out / "report.md").write_text(format_report(report))
    pairs.close()
    return report


def _final_report(cfg: TrainConfig, pairs: EmbeddingPairs, train_rows: np.ndarray, val_rows: np.ndarray,
                  history: list[dict[str, Any]], best_epoch: int, device: torch.device, use_bf16: bool
                  ) -> dict[str, Any]:
    """The best checkpoint's validation (and train) metrics against the seed's targets."""
    best, _ = load_mlp(Path(cfg.output_dir))
    best.to(device)
    if cfg.eval_train_at_end:
        train_final = evaluate(best, pairs, train_rows, cfg.batch_size, device, use_bf16, cfg.shuffle_buffer_rows)
    else:  # the best epoch's running train metrics (cheaper; weights moved during that epoch)
        row = history[best_epoch - 1]
        train_final = {k: row[f"train_{k}"] for k in ("cosine", "mse", "alignment_variance")}
    report = {"best_epoch": best_epoch, "epochs": cfg.epochs,
              "val": evaluate(best, pairs, val_rows, cfg.batch_size, device, use_bf16, cfg.shuffle_buffer_rows),
              "train": train_final,
              "train_images": len(train_rows), "val_images": len(val_rows), "tokens_per_image": pairs.tokens_per_image,
              "mean_pairs_per_s": float(np.mean([r["pairs_per_s"] for r in history])), "device": str(device),
              "bf16": use_bf16}
    report["targets"] = check_targets(report["val"])
    report["all_targets_met"] = all(v["pass"] for v in report["targets"].values())
    return report


def format_report(report: dict[str, Any], targets: Targets | None = None) -> str:
    """Markdown: validation metrics of the best epoch vs the seed's targets, then per-category numbers."""
    lines = [f"# MLP alignment report (best epoch {report['best_epoch']} of {report['epochs']})", "",
             "| metric (validation) | value | target | result |", "|---|---|---|---|"]
    for name, chk in report["targets"].items():
        lines.append(f"| {name} | {chk['value']:.4g} | {chk['target']} | {'PASS' if chk['pass'] else 'FAIL'} |")
    lines += ["", f"train: cosine {report['train']['cosine']:.4f}, mse {report['train']['mse']:.4g}, "
              f"alignment variance {report['train']['alignment_variance']:.4g}", "",
              "| category | val cosine | val mse | val rows |", "|---|---|---|---|"]
    for cat, m in report["val"]["per_category"].items():
        lines.append(f"| {cat} | {m['cosine']:.4f} | {m['mse']:.4g} | {m['rows']} |")
    return "\n".join(lines) + "\n"
