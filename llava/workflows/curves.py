"""Training and validation curves of the three-stage workflow's stages, and the summary's pictures.

Each stage's training run leaves ``model/trainer_state.json`` (Hugging Face Trainer); its ``log_history``
holds training entries (``loss``, ``accuracy``: answer-token accuracy 0..1, ``step``) and, with validation
data (``EVAL_DATA_PATH``), evaluation entries (``eval_loss``, ``eval_accuracy``, ``step``), the last one at
the final step. On a chain's one time axis stage k's steps are offset by the total steps of the stages
before it in the chain (:func:`chain_offsets`). Pictures (matplotlib, Agg):

- ``validation_loss.png``: validation loss (training loss faint) of every chain across its stages, stage
  boundaries as vertical lines;
- ``accuracy.png``: training and validation accuracy per stage on the same axis, and the final values per
  stage as bars;
- ``chains.png``: the domain stages (2, 3) of every chain side by side: validation loss and accuracy per
  stage over the stage's own steps, one line per chain (e.g. 1-2-3 vs 2-3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOMAIN_STAGES = (2, 3)
PICTURES = ("validation_loss.png", "accuracy.png", "chains.png")


@dataclass(frozen=True)
class StageLog:
    """One stage's logged history: training entries, evaluation entries, total steps."""

    folder: str
    stage: int
    name: str
    total_steps: int
    train: tuple[Mapping[str, Any], ...] = ()
    evals: tuple[Mapping[str, Any], ...] = ()

    @property
    def final_eval(self) -> Mapping[str, Any] | None:
        """The last evaluation entry (the one at the final step), if any."""
        return self.evals[-1] if self.evals else None

    @property
    def final_train(self) -> Mapping[str, Any] | None:
        """The last training log entry, if any."""
        return self.train[-1] if self.train else None

    def series(self, key: str, offset: int = 0) -> tuple[list[float], list[float]]:
        """(x = step + offset, y) of ``key`` (``eval_*`` keys from the evaluation entries, others from the
        training entries)."""
        entries = self.evals if key.startswith("eval_") else self.train
        pts = [(float(e["step"]) + offset, float(e[key])) for e in entries
               if isinstance(e.get(key), (int, float)) and isinstance(e.get("step"), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]


def read_trainer_state(output_dir: str | Path) -> dict[str, Any] | None:
    """``<output_dir>/trainer_state.json``; ``None`` when missing or unreadable."""
    try:
        data = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_stage_log(output_dir: str | Path, stage: int, name: str = "", folder: str = "") -> StageLog:
    """The :class:`StageLog` of a stage's ``OUTPUT_DIR`` (empty when it has no ``trainer_state.json``)."""
    state = read_trainer_state(output_dir) or {}
    history = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
    train = tuple(e for e in history if "loss" in e and not any(k.startswith("eval_") for k in e))
    evals = tuple(e for e in history if "eval_loss" in e)
    steps = [int(e["step"]) for e in history if isinstance(e.get("step"), (int, float))]
    total = state.get("global_step")
    total = int(total) if isinstance(total, (int, float)) else max(steps, default=0)
    return StageLog(folder or Path(output_dir).parent.name, stage, name, total, train, evals)


def final_eval(output_dir: str | Path) -> Mapping[str, Any] | None:
    """The last evaluation entry of a stage's training run."""
    return load_stage_log(output_dir, 0).final_eval


def chain_offsets(logs: Sequence[StageLog]) -> list[int]:
    """Per stage: the total steps of the stages before it in the chain."""
    out, total = [], 0
    for log in logs:
        out.append(total)
        total += log.total_steps
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _has(chains: Mapping[str, Sequence[StageLog]], key: str) -> bool:
    return any(log.series(key)[0] for logs in chains.values() for log in logs)


def _boundaries(ax: Any, logs: Sequence[StageLog], offsets: Sequence[int]) -> None:
    for off in offsets[1:]:
        ax.axvline(off, color="grey", linestyle=":", linewidth=1)
    for log, off in zip(logs, offsets):
        ax.text(off, 1.0, f" stage {log.stage}", transform=ax.get_xaxis_transform(), va="bottom", fontsize=7,
                color="grey")


def _curve_panels(chains: Mapping[str, Sequence[StageLog]], path: Path, keys: Sequence[tuple[str, str, dict]],
                  ylabel: str, title: str, bars: bool) -> None:
    plt = _plt()
    rows = len(chains) + (1 if bars else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.6 * rows), squeeze=False)
    for ax, (label, logs) in zip(axes[:, 0], chains.items()):
        offsets = chain_offsets(logs)
        for log, off in zip(logs, offsets):
            for key, what, style in keys:
                xs, ys = log.series(key, off)
                if xs:
                    ax.plot(xs, ys, color=f"C{log.stage - 1}", label=f"stage {log.stage} {what}", **style)
        _boundaries(ax, logs, offsets)
        ax.set_title(f"chain {label}", fontsize=9)
        ax.set_xlabel("step (stages one after the other)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7, ncol=2)
    if bars:
        _final_bars(axes[-1, 0], chains)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _final_bars(ax: Any, chains: Mapping[str, Sequence[StageLog]]) -> None:
    x = 0.0
    ticks, names = [], []
    for label, logs in chains.items():
        for log in logs:
            ev, tr = log.final_eval or {}, log.final_train or {}
            if isinstance(ev.get("eval_accuracy"), (int, float)):
                ax.bar(x, ev["eval_accuracy"], 0.8, color=f"C{log.stage - 1}")
            if isinstance(tr.get("accuracy"), (int, float)):
                ax.plot([x], [tr["accuracy"]], "kx")
            ticks.append(x)
            names.append(f"{label}\nstage {log.stage}")
            x += 1
        x += 0.6
    ax.set_xticks(ticks, names, fontsize=7)
    ax.set_ylabel("final accuracy", fontsize=8)
    ax.set_title("final validation accuracy per stage (bars; x: final training accuracy)", fontsize=9)


def plot_validation_loss(chains: Mapping[str, Sequence[StageLog]], path: Path) -> bool:
    """``validation_loss.png``; ``False`` (nothing drawn) when no stage logged a loss."""
    if not (_has(chains, "eval_loss") or _has(chains, "loss")):
        return False
    keys = [("eval_loss", "validation", {"marker": "o", "markersize": 3}),
            ("loss", "training", {"alpha": 0.3, "linewidth": 1})]
    _curve_panels(chains, path, keys, "loss", "validation loss across the stages", bars=False)
    return True


def plot_accuracy(chains: Mapping[str, Sequence[StageLog]], path: Path) -> bool:
    """``accuracy.png``; ``False`` when no stage logged an accuracy."""
    if not (_has(chains, "eval_accuracy") or _has(chains, "accuracy")):
        return False
    keys = [("eval_accuracy", "validation", {"marker": "o", "markersize": 3}),
            ("accuracy", "training", {"alpha": 0.35, "linewidth": 1, "linestyle": "--"})]
    _curve_panels(chains, path, keys, "answer-token accuracy", "accuracy per stage", bars=True)
    return True


def plot_chains(chains: Mapping[str, Sequence[StageLog]], path: Path) -> bool:
    """``chains.png`` (domain stages of every chain on the same axes); ``False`` with fewer than two chains
    or no domain stage with a logged loss."""
    stages = [n for n in DOMAIN_STAGES if any(log.stage == n for logs in chains.values() for log in logs)]
    if len(chains) < 2 or not stages or not (_has(chains, "eval_loss") or _has(chains, "loss")):
        return False
    plt = _plt()
    fig, axes = plt.subplots(2, len(stages), figsize=(5 * len(stages), 6), squeeze=False)
    for col, n in enumerate(stages):
        for i, (label, logs) in enumerate(chains.items()):
            for log in (lg for lg in logs if lg.stage == n):
                colour = f"C{i}"
                for row, key, style in ((0, "eval_loss", "-o"), (1, "eval_accuracy", "-o"), (1, "accuracy", "--")):
                    xs, ys = log.series(key)
                    if xs:
                        what = "training" if key == "accuracy" else "validation"
                        axes[row, col].plot(xs, ys, style, color=colour, markersize=3, label=f"{label} ({what})",
                                            alpha=0.5 if key == "accuracy" else 1.0)
        for row, ylabel in ((0, "validation loss"), (1, "accuracy")):
            ax = axes[row, col]
            ax.set_title(f"stage {n}", fontsize=9)
            ax.set_xlabel("step of the stage", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle("chains compared on the domain stages", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw_pictures(chains: Mapping[str, Sequence[StageLog]], out_dir: Path) -> list[str]:
    """Draw the pictures that have data into ``out_dir`` (removing the ones that no longer have); returns the
    file names drawn."""
    drawn = []
    for name, draw in zip(PICTURES, (plot_validation_loss, plot_accuracy, plot_chains)):
        path = out_dir / name
        if draw(chains, path):
            drawn.append(name)
        else:
            path.unlink(missing_ok=True)
    return drawn
