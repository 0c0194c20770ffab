"""``load_pretrained_model``: rebuild a LLaVA model for inference from what is on disk.

The kind of checkpoint is decided from the files present (never from the folder name):

* ``lora``: ``adapter_config.json`` -> base LLM from ``model_base`` + ``non_lora_trainables.bin``
  + the PEFT adapter, merged;
* ``projector_only``: ``mm_projector.bin`` and no full weights -> base LLM from ``model_base`` +
  the projector;
* ``full``: full weights whose ``config.json`` names a vision tower;
* ``plain``: any other causal LM (no vision tower, no image processor).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import llava.model  # noqa: F401  (registers the llava_* model types with the Auto classes)

from .checkpoints import (
    MM_PROJECTOR_FILE,
    NON_LORA_FILE,
    load_mm_projector,
    load_projector_addons,
    load_weights_file,
)
from .reference_layout import (
    ReferenceMapping,
    is_reference_config,
    log_mapping,
    map_config,
    map_keys,
    map_state,
    read_config_dict,
    refuse_2d,
)

logger = logging.getLogger(__name__)

FULL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def detect_checkpoint_kind(model_path: str | os.PathLike) -> str:
    """Return ``'lora'``, ``'projector_only'``, ``'full'`` or ``'plain'`` from the files in ``model_path``."""
    path = Path(model_path)
    if path.is_dir():
        files = {p.name for p in path.iterdir()}
        if "adapter_config.json" in files:
            return "lora"
        if MM_PROJECTOR_FILE in files and not files & set(FULL_WEIGHT_FILES):
            return "projector_only"
    cfg = AutoConfig.from_pretrained(str(model_path))
    return "full" if getattr(cfg, "mm_vision_tower", None) else "plain"


def _has_tokenizer(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in TOKENIZER_FILES)


def _require_base(kind: str, model_path: str, model_base: str | None) -> str:
    if model_base is None:
        raise ValueError(
            f"{model_path} holds a {kind.replace('_', '-')} checkpoint; pass the base LLM it was trained from "
            "as model_base (--model-base)."
        )
    return model_base


def _quant_kwargs(load_8bit: bool, load_4bit: bool) -> dict[str, Any]:
    if not (load_8bit or load_4bit):
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "load_8bit/load_4bit need bitsandbytes (pip install bitsandbytes) and a CUDA GPU."
        ) from err
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4")}


def _load_non_lora_trainables(model: torch.nn.Module, path: Path) -> None:
    state = load_weights_file(path)
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise ValueError(f"{path}: keys not in the model: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    model.load_state_dict(state, strict=False)


def _load_projector_file(model: torch.nn.Module, path: Path, reference: ReferenceMapping | None = None) -> None:
    """The projector and the add-on modules that travel with it, from one ``mm_projector.bin``."""
    state = load_weights_file(path)
    if reference is not None:
        state = map_state(state, reference)
    load_mm_projector(model.get_model().mm_projector, path, state=state)
    load_projector_addons(model.get_model(), path, state=state)


def _load_lora(model_path: str, model_base: str | None, load_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    base = _require_base("lora", model_path, model_base)
    cfg = AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path if _has_tokenizer(model_path) else base)
    model = AutoModelForCausalLM.from_pretrained(base, config=cfg, **load_kwargs)
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    non_lora = Path(model_path) / NON_LORA_FILE
    if non_lora.exists():
        _load_non_lora_trainables(model, non_lora)
    else:
        logger.warning("%s has no %s: projector weights stay as in the base model", model_path, NON_LORA_FILE)
    from peft import PeftModel

    return tokenizer, PeftModel.from_pretrained(model, model_path).merge_and_unload()


def _checkpoint_keys(model_path: str) -> list[str]:
    """State-dict keys of a full checkpoint's weight files (read from headers / weights-only loads)."""
    path = Path(model_path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return list(json.loads((path / index).read_text())["weight_map"])
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            return list(f.keys())
    return list(load_weights_file(path / "pytorch_model.bin"))


def _load_reference(model_path: str, model_base: str | None, kind: str, reference: ReferenceMapping,
                    load_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """A Beyond Semantics reference checkpoint (full or projector-only), mapped onto our layout."""
    if kind not in ("full", "projector_only"):
        raise ValueError(f"{model_path}: a reference {kind} checkpoint cannot be mapped (only full and "
                         "projector-only ones); merge it with the reference code first.")
    cfg_dict = dict(reference.config)
    cfg = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    log_mapping(model_path, reference)
    if kind == "projector_only":
        base = _require_base(kind, model_path, model_base)
        tokenizer = AutoTokenizer.from_pretrained(model_path if _has_tokenizer(model_path) else base)
        model = AutoModelForCausalLM.from_pretrained(base, config=cfg, **load_kwargs)
        _load_projector_file(model, Path(model_path) / MM_PROJECTOR_FILE, reference)
        return tokenizer, model
    renames = {f"^{re.escape(old)}$": new for old, new in map_keys(_checkpoint_keys(model_path), reference).items()
               if new is not None}
    tokenizer = AutoTokenizer.from_pretrained(model_path if _has_tokenizer(model_path) else model_base)
    model = AutoModelForCausalLM.from_pretrained(model_path, config=cfg, key_mapping=renames, **load_kwargs)
    return tokenizer, model


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = None,
    device: str | None = None,
    use_flash_attn: bool = False,
    torch_dtype: torch.dtype | None = None,
    addon_modules: str | list[str] | tuple[str, ...] | None = None,
    **kwargs: Any,
) -> tuple[Any, torch.nn.Module, Any, int]:
    """Load ``(tokenizer, model, image_processor, context_len)`` like upstream LLaVA.

    ``model_name`` is accepted for upstream compatibility and ignored: the checkpoint kind comes
    from the files present. ``device`` defaults to CUDA when available, else CPU; the dtype to
    float16 on CUDA and float32 on CPU. ``addon_modules``: the external add-on modules the
    checkpoint was trained with (its ``config.json`` names them; they are imported only when
    passed here, like ``trust_remote_code``).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    load_kwargs: dict[str, Any] = {"dtype": dtype, **_quant_kwargs(load_8bit, load_4bit), **kwargs}
    raw = read_config_dict(model_path) if Path(model_path).is_dir() else None
    if raw is not None:
        refuse_2d(raw, model_path)
    reference = map_config(raw, model_path) if is_reference_config(raw) else None
    kind = detect_checkpoint_kind(model_path)
    if kind != "plain":
        from .addons.registry import parse_module_list

        load_kwargs["addon_modules"] = parse_module_list(addon_modules)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    load_kwargs["attn_implementation"] = "flash_attention_2" if use_flash_attn else "sdpa"

    logger.info("load_pretrained_model: %s is a %s checkpoint", model_path, kind)
    if reference is not None:
        tokenizer, model = _load_reference(model_path, model_base, kind, reference, load_kwargs)
    elif kind == "lora":
        tokenizer, model = _load_lora(model_path, model_base, load_kwargs)
    elif kind == "projector_only":
        base = _require_base(kind, model_path, model_base)
        cfg = AutoConfig.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path if _has_tokenizer(model_path) else base)
        model = AutoModelForCausalLM.from_pretrained(base, config=cfg, **load_kwargs)
        _load_projector_file(model, Path(model_path) / MM_PROJECTOR_FILE)
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_path if _has_tokenizer(model_path) else model_base)
        model = AutoModelForCausalLM.from_pretrained(model_path, **load_kwargs)

    image_processor = None
    if hasattr(model, "get_vision_tower") and model.get_vision_tower() is not None:
        tower = model.get_vision_tower()
        if not tower.is_loaded:
            tower.load_model(device_map=device_map)
        if device_map is None:
            tower.to(device=device, dtype=dtype)
        image_processor = tower.image_processor
    if device_map is None and not (load_8bit or load_4bit):
        model.to(device)
    model.eval()
    return tokenizer, model, image_processor, context_length(model.config)


def context_length(config: Any) -> int:
    """The positions the model is set up for: ``tokenizer_model_max_length`` (what training used and the
    image splice enforces), else ``max_sequence_length`` / ``max_position_embeddings``, else upstream's 2048."""
    for key in ("tokenizer_model_max_length", "max_sequence_length", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
