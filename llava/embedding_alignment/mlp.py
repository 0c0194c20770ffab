"""The alignment MLP (seed 000): ``Linear(d_in -> h) -> LayerNorm(h) -> GELU -> Linear(h -> d_out)``.

``h`` defaults to ``d_out`` (4096 -> 5120 -> 5120 for LLaVA-1.5 7B -> 13B). Saved as
``mlp.safetensors`` + ``mlp_config.json`` (dims plus whatever the trainer adds: epoch, metrics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava.utils.atomic import atomic_path

from .store import atomic_write_json

WEIGHTS_FILE = "mlp.safetensors"
CONFIG_FILE = "mlp_config.json"


class AlignmentMLP(nn.Module):
    """Maps X-model embeddings (``d_in``) onto the y-model's space (``d_out``)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_out
        self.d_in, self.d_out, self.hidden = d_in, d_out, hidden
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in)`` -> ``(..., d_out)``."""
        return self.net(x)


def save_mlp(model: AlignmentMLP, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write weights (atomically) and ``mlp_config.json`` to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write_json(out / CONFIG_FILE, {"d_in": model.d_in, "d_out": model.d_out, "hidden": model.hidden,
                                          "architecture": "Linear-LayerNorm-GELU-Linear", **(extra or {})})


def load_mlp(out_dir: str | os.PathLike) -> tuple[AlignmentMLP, dict[str, Any]]:
    """Rebuild an :class:`AlignmentMLP` saved by :func:`save_mlp`; returns ``(model, config)``."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    if not (out / CONFIG_FILE).is_file() or not (out / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{out} has no {WEIGHTS_FILE} + {CONFIG_FILE}: point it at a train_mlp --output_dir")
    config = json.loads((out / CONFIG_FILE).read_text())
    model = AlignmentMLP(config["d_in"], config["d_out"], config["hidden"])
    model.load_state_dict(load_file(str(out / WEIGHTS_FILE)))
    return model.eval(), config
