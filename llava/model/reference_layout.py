"""Checkpoints of the Beyond Semantics reference implementation: recognise them, map them onto ours, or refuse.

The reference (``user074/beyond-semantics``, folder ``LLaVA/``) wraps the projector instead of adding
modules beside it, and writes every add-on field into ``config.json``:

* config: ``num_vision_tokens`` (written by every reference run, never by ours — the marker),
  ``normalize_projector``, ``use_multilayer_features`` (layers 12, 16, 20, 24 hard-coded, each through
  the tower's ``post_layernorm``, CLS dropped), ``compression_after_projection`` with
  ``final_spatial_size`` as the pooled grid *side*, ``add_spatial_coordinates``, ``add_registers`` /
  ``num_registers``, and ``mm_hidden_size`` = the tower width (not multiplied by the layer count);
* keys: ``NormalizedProjector`` -> ``mm_projector.projector.*`` + ``mm_projector.norm.weight``;
  ``PoolingProjector`` -> ``mm_projector.proj.*``; ``VisionProjectorWithSpatial`` and
  ``VisionProjectorWithRegisters`` -> ``mm_projector.projector.*`` (+ ``mm_projector.registers``).

Mapped onto ours: normalize -> ``--mm_norm_style reference`` (0.83 / 1.22); multilayer ->
``mm_multilayer_select [12, 16, 20, 24]`` with post-norm; pooling -> ``final_spatial_size`` = side^2
(avg); coordinates -> ``add_spatial_coordinates``; registers -> dropped (the reference slices them off
before the LLM, so they never affected its outputs). Refused, with a message naming the reason: the
2D-position model (``model_type llava_llama2d``), and combinations the reference itself cannot run.
The decision uses the files and config fields present, never a folder name.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER_KEY = "num_vision_tokens"
MODEL_TYPES_2D = ("llava_llama2d",)
REFERENCE_LAYERS = [12, 16, 20, 24]
REFERENCE_ONLY_KEYS = (MARKER_KEY, "add_registers", "num_registers")
OFF_WHEN_FALSE = ("normalize_projector", "use_multilayer_features", "compression_after_projection",
                  "add_spatial_coordinates")
_BASE_KEY = re.compile(r"^(\d+\.)?(weight|bias)$")


@dataclass
class ReferenceMapping:
    """Our config fields for a reference checkpoint, and what was mapped (for the log line)."""

    config: dict[str, Any]
    normalize: bool = False
    pooling: bool = False
    spatial: bool = False
    registers: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def wrappers(self) -> int:
        """``projector.`` levels around the base projector (pooling adds a ``proj.`` level)."""
        return int(self.normalize) + int(self.registers) + int(self.spatial and not self.pooling)


def read_config_dict(path: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a folder (or the folder of a file) as a dict, or None when there is none."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text(encoding="utf-8"))


def refuse_2d(cfg: dict[str, Any], where: str) -> None:
    """A clear refusal for the reference's 2D-position model."""
    if cfg.get("model_type") in MODEL_TYPES_2D:
        raise ValueError(
            f"{where}: model_type {cfg['model_type']!r} is the reference's 2D-position model (LlamaHybridModel "
            "with its hybrid rotary embedding), which has no equivalent here and cannot be mapped; train "
            "ours with --twoD_vision_embedding instead.")


def is_reference_config(cfg: dict[str, Any] | None) -> bool:
    return bool(cfg) and MARKER_KEY in cfg


def map_config(cfg: dict[str, Any], where: str) -> ReferenceMapping:
    """Our config dict for a reference ``config.json`` (raises ``ValueError`` for what cannot be mapped)."""
    refuse_2d(cfg, where)
    out = {k: v for k, v in cfg.items() if k not in REFERENCE_ONLY_KEYS}
    on = {k: bool(cfg.get(k, False)) for k in OFF_WHEN_FALSE}
    m = ReferenceMapping(config=out, normalize=on["normalize_projector"],
                         pooling=on["compression_after_projection"], spatial=on["add_spatial_coordinates"],
                         registers=bool(cfg.get("add_registers", False)))
    if m.registers and (m.normalize or m.pooling or m.spatial):
        raise ValueError(f"{where}: add_registers together with normalize/compression/coordinates cannot be "
                         "mapped: the reference's wrappers cannot run that combination (its registers "
                         "projector returns a tuple).")
    if m.spatial and (m.pooling or on["use_multilayer_features"]):
        raise ValueError(f"{where}: add_spatial_coordinates with compression or multi-layer features cannot be "
                         "mapped: the reference drops the coordinates under compression and miscounts the "
                         "projector width with multi-layer features.")
    for k in OFF_WHEN_FALSE:
        if not on[k]:
            out.pop(k, None)
    if not m.pooling:
        out.pop("final_spatial_size", None)
    width = int(cfg["mm_hidden_size"])
    if on["use_multilayer_features"]:
        out.update(mm_multilayer_select=list(REFERENCE_LAYERS), mm_multilayer_post_norm=True)
        width *= len(REFERENCE_LAYERS)
        m.notes.append("multi-layer 12,16,20,24 with post-norm")
    if m.spatial:
        width += 2
        m.notes.append("spatial coordinates")
    out["mm_hidden_size"] = width
    if m.normalize:
        out.update(mm_norm_style="reference", mm_norm_target=0.83, mm_norm_max=1.22)
        m.notes.append("normalized projector -> mm_norm_style reference")
    if m.pooling:
        side = int(cfg.get("final_spatial_size", 16))
        out.update(final_spatial_size=side * side, mm_compression_mode="avg")
        m.notes.append(f"pooling to side {side} -> final_spatial_size {side * side}")
    if m.registers:
        m.notes.append("registers dropped (the reference never fed them to the LLM)")
    return m


def map_key(key: str, m: ReferenceMapping) -> str | None:
    """Our name for one reference state-dict key (None: drop it); other keys come back unchanged."""
    marker = "mm_projector."
    if marker not in key:
        return key
    prefix, rest = key.split(marker, 1)
    if m.pooling:
        if not rest.startswith("proj."):
            raise ValueError(f"reference key {key!r}: expected the pooling wrapper's 'proj.' level")
        rest = rest[len("proj."):]
    depth = 0
    while True:
        if m.normalize and depth == 0 and rest == "norm.weight":
            return f"{prefix}mm_projector_norm.weight"
        if m.registers and rest == "registers":
            return None
        if not rest.startswith("projector."):
            break
        rest, depth = rest[len("projector."):], depth + 1
    if depth != m.wrappers or not _BASE_KEY.match(rest):
        raise ValueError(f"reference key {key!r} does not match the wrappers its config.json describes "
                         f"({m.wrappers} 'projector.' level(s)); the checkpoint and its config disagree.")
    return f"{prefix}{marker}{rest}"


def map_keys(keys: Iterable[str], m: ReferenceMapping) -> dict[str, str | None]:
    """{reference key: our key or None (dropped)} for the keys that change."""
    changes = {}
    for k in keys:
        new = map_key(k, m)
        if new != k:
            changes[k] = new
    return changes


def map_state(state: dict[str, Any], m: ReferenceMapping) -> dict[str, Any]:
    """A reference projector state dict renamed to our keys (dropped keys left out)."""
    out = {}
    for k, v in state.items():
        new = map_key(k, m)
        if new is not None:
            out[new] = v
    return out


def log_mapping(where: str, m: ReferenceMapping) -> None:
    """The one log line that says what was mapped."""
    logger.warning("%s is a Beyond Semantics reference checkpoint; mapped onto this fork's layout: %s", where,
                   "; ".join(m.notes) or "plain projector")


def matching_flags(m: ReferenceMapping) -> str:
    """The training flags that build our equivalent of a reference projector."""
    cfg, flags = m.config, []
    if m.normalize:
        flags.append("--normalize_projector True --mm_norm_style reference")
    if "mm_multilayer_select" in cfg:
        flags.append("--use_multilayer_features True --mm_multilayer_select 12,16,20,24 --mm_multilayer_post_norm True")
    if m.pooling:
        flags.append(f"--compression_after_projection True --final_spatial_size {cfg['final_spatial_size']}")
    if m.spatial:
        flags.append("--add_spatial_coordinates True")
    return " ".join(flags) or "no add-on flag"


def adapter_state(path: str | Path, load: Any) -> dict[str, Any]:
    """An ``mm_projector.bin``'s tensors (read by ``load``), mapped when its ``config.json`` is the reference's."""
    state = load(path)
    raw = read_config_dict(path)
    if raw is not None:
        refuse_2d(raw, str(path))
    if is_reference_config(raw):
        m = map_config(raw, str(path))
        log_mapping(str(path), m)
        logger.warning("%s: train with the matching flags: %s", path, matching_flags(m))
        state = map_state(state, m)
    return state
