"""Configuration dataclasses and run helpers (device choice, seeding) for the contrastive alignment."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRUST_FLAG = "--trust_remote_code True"


class RemoteCodeRefusedError(ValueError):
    """A config file in a folder we load asks for ``trust_remote_code``; only the command line may."""


def trust_from_flag(d: dict[str, Any], path: str | os.PathLike, trust_remote_code: bool) -> dict[str, Any]:
    """``d`` with ``trust_remote_code`` set from the flag; a file that asks for it without the flag is refused.

    Code from a model folder runs only when the user typed :data:`TRUST_FLAG`: a config file saved next to
    the weights (``alignment_config.json``, ``llm_config.json``) can never turn it on.
    """
    if d.get("trust_remote_code") not in (None, False) and not trust_remote_code:
        raise RemoteCodeRefusedError(
            f"{path} asks for \"trust_remote_code\": true, which a config file cannot turn on: pass {TRUST_FLAG} "
            f"to run the Python of the models it names, or set it to false in {path}")
    return {**d, "trust_remote_code": bool(trust_remote_code)}


def get_device() -> str:
    """The best available device name: ``cuda``, then ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _resolve_device(device: str) -> str:
    return get_device() if device in ("", "auto") else device


@dataclass
class AlignmentConfig:
    """Phase-1 settings: the frozen encoders, the shared space, the Matryoshka loss and training.

    ``matryoshka_dims`` are the nested prefix sizes the loss is applied at (each <= ``d_align``;
    ``d_align`` itself is added when missing); ``matryoshka_weights`` (same length, default all 1.0)
    weight each dimension's loss in the sum.
    """

    vision_model_name: str = "openai/clip-vit-base-patch32"
    text_model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    d_align: int = 512
    matryoshka_dims: tuple[int, ...] = (64, 128, 256, 512)
    matryoshka_weights: tuple[float, ...] | None = None
    adapter_hidden: int | None = None
    adapter_dropout: float = 0.0
    vision_pooling: str = "pooler"
    init_logit_scale: float = float(np.log(1 / 0.07))
    max_logit_scale: float = 100.0
    learnable_temperature: bool = True
    batch_size: int = 32
    captions_per_image: int = 1
    num_epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    seed: int = 42
    device: str = "auto"
    text_max_length: int | None = None
    encode_batch_size: int = 64
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.device = _resolve_device(self.device)
        dims = sorted({int(d) for d in self.matryoshka_dims} | {int(self.d_align)})
        if dims[0] < 1 or dims[-1] > self.d_align:
            raise ValueError(f"matryoshka_dims {list(self.matryoshka_dims)} must lie in 1..d_align={self.d_align}")
        if self.matryoshka_weights is not None:
            if len(self.matryoshka_weights) != len(self.matryoshka_dims):
                raise ValueError(
                    f"matryoshka_weights has {len(self.matryoshka_weights)} values but matryoshka_dims has "
                    f"{len(self.matryoshka_dims)}; give one weight per dim")
            given = dict(zip((int(d) for d in self.matryoshka_dims), (float(w) for w in self.matryoshka_weights)))
            self.matryoshka_weights = tuple(given.get(d, 1.0) for d in dims)
        else:
            self.matryoshka_weights = tuple(1.0 for _ in dims)
        self.matryoshka_dims = tuple(dims)
        if self.vision_pooling not in ("pooler", "mean", "cls"):
            raise ValueError(f"vision_pooling={self.vision_pooling!r}; valid: 'pooler', 'mean', 'cls'")
        if self.captions_per_image < 1:
            raise ValueError("captions_per_image must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        d = asdict(self)
        d["matryoshka_dims"] = list(self.matryoshka_dims)
        d["matryoshka_weights"] = list(self.matryoshka_weights or ())
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignmentConfig:
        """Build from a dict, ignoring unknown keys (so older/newer files still load)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("matryoshka_dims", "matryoshka_weights"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    @classmethod
    def load(cls, path: str | os.PathLike, trust_remote_code: bool = False) -> AlignmentConfig:
        """Read a config written by :meth:`save`; ``trust_remote_code`` comes from the caller's flag only."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"alignment config {p} not found; pass the --output_dir of the phase-1 run")
        return cls.from_dict(trust_from_flag(json.loads(p.read_text()), p, trust_remote_code))


@dataclass
class LLMConfig:
    """Phase-2 settings: the causal LM, the prefix projector, LoRA, generation and training."""

    model_name: str = "Qwen/Qwen2.5-1.5B-Instruct"
    num_prefix_tokens: int = 4
    projector_hidden: int | None = None
    aligned_dim: int | None = None
    prompt: str = "Describe this image:"
    use_chat_template: bool = True
    use_lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    max_caption_tokens: int = 48
    max_new_tokens: int = 32
    lr: float = 1e-3
    lora_lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    torch_dtype: str = "float32"
    device: str = "auto"
    seed: int = 42
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        self.device = _resolve_device(self.device)
        if self.num_prefix_tokens < 1:
            raise ValueError("num_prefix_tokens must be >= 1")
        self.lora_target_modules = tuple(self.lora_target_modules)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        d = asdict(self)
        d["lora_target_modules"] = list(self.lora_target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMConfig:
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
