"""Load a LLaVA checkpoint as an image-embedding function: pixels -> post-projector tokens.

Two kinds, chosen from the checkpoint's ``config.model_type`` (never its name):

* ``llava`` -> transformers' native ``LlavaForConditionalGeneration`` (llava-hf checkpoints such as
  ``llava-hf/llava-1.5-7b-hf``); embeddings from ``get_image_features`` with the checkpoint's own
  ``vision_feature_layer`` and ``vision_feature_select_strategy``.
* ``llava_llama`` / ``llava_qwen2`` / ``llava_mistral`` -> this project's checkpoints through
  :func:`llava.model.builder.load_pretrained_model` (full, LoRA + base, projector-only + base);
  embeddings from ``model.encode_images`` (add-on flags in the config apply inside it).

Only the vision tower and projector are needed, so the language model's decoder layers and LM head
are dropped after loading to free memory. Preprocessing is described by :meth:`EmbeddingModel.preprocess_spec`;
the generator preprocesses each batch once and feeds the same pixels to both models.
"""

from __future__ import annotations

import gc
import logging
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

from llava.mm_utils import crop_size_of, process_images

logger = logging.getLogger(__name__)

NATIVE_MODEL_TYPE = "llava"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 elsewhere; else one of ``float32/float16/bfloat16``."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} not supported; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _plain(value: Any) -> Any:
    """JSON-friendly, comparable form of an image-processor setting (dicts, SizeDicts, tuples, enums)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in sorted(value.__dataclass_fields__)
                if getattr(value, k) is not None}
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


class EmbeddingModel:
    """A loaded LLaVA model reduced to ``preprocess`` (PIL -> pixels) and ``embed`` (pixels -> tokens)."""

    kind = "abstract"

    def __init__(self, model: torch.nn.Module, image_processor: Any, aspect: str | None, path: str,
                 base: str | None, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.image_processor, self.aspect = model, image_processor, aspect
        self.path, self.base, self.device, self.dtype = path, base, device, dtype

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """``(N, 3, H, W)`` float32 pixels with this model's processor and aspect handling."""
        return process_images(images, self.image_processor, SimpleNamespace(image_aspect_ratio=self.aspect))

    def preprocess_spec(self) -> dict[str, Any]:
        """Every setting that changes the pixels, in a comparable form."""
        p = self.image_processor
        keys = ("do_resize", "size", "resample", "do_center_crop", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb")
        spec = {k: _plain(getattr(p, k, None)) for k in keys}
        spec["crop_size"] = list(crop_size_of(p))
        spec["image_aspect_ratio"] = self.aspect
        return spec

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, T, hidden)`` post-projector tokens (float32, CPU) for preprocessed ``pixels``."""
        out = self._embed(pixels.to(device=self.device, dtype=self.dtype))
        return out.float().cpu()

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest about this model."""
        return {"path": self.path, "model_base": self.base, "kind": self.kind,
                "dtype": str(self.dtype).removeprefix("torch."), **self._config_summary()}

    def _config_summary(self) -> dict[str, Any]:
        return {}


class ProjectLlavaModel(EmbeddingModel):
    """This project's LLaVA checkpoints (``llava_llama`` ...): ``model.encode_images``."""

    kind = "llava_project"

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixels)

    def _config_summary(self) -> dict[str, Any]:
        cfg = self.model.config
        keys = ("model_type", "mm_vision_tower", "mm_projector_type", "mm_vision_select_layer",
                "mm_vision_select_feature", "image_aspect_ratio", "hidden_size")
        return {k: getattr(cfg, k, None) for k in keys}


class HfLlavaModel(EmbeddingModel):
    """transformers' native ``LlavaForConditionalGeneration``: ``get_image_features`` with its config."""

    kind = "llava_hf"

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=pixels, vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True)
        feats = out.pooler_output
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    def _config_summary(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"model_type": cfg.model_type, "vision_feature_layer": cfg.vision_feature_layer,
                "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
                "projector_hidden_act": getattr(cfg, "projector_hidden_act", None),
                "hidden_size": cfg.text_config.hidden_size}


def checkpoint_model_type(path: str) -> str:
    """``config.model_type`` of a checkpoint (local folder or hub id), with this project's types registered."""
    from transformers import AutoConfig

    import llava.model  # noqa: F401  (registers llava_* configs with AutoConfig)

    return AutoConfig.from_pretrained(path).model_type


def _drop_language_model(model: torch.nn.Module, native: bool) -> None:
    """Free the decoder layers and LM head: only the tower and projector (and embeddings) are used."""
    if native:
        model.model.language_model = torch.nn.Identity()
    else:
        inner = model.get_model()
        if hasattr(inner, "layers"):
            inner.layers = torch.nn.ModuleList()
    if hasattr(model, "lm_head"):
        model.lm_head = torch.nn.Identity()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_embedding_model(path: str, model_base: str | None = None, device: str = "auto", dtype: str = "auto",
                         flag: str = "--model") -> EmbeddingModel:
    """Load ``path`` as an :class:`EmbeddingModel`, picking the loader from its ``config.model_type``.

    ``flag`` names the CLI flag in error messages (``--model_7b`` ...).
    """
    from llava.model import LLAVA_CLASSES

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        model_type = checkpoint_model_type(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{flag} {path!r}: cannot read its config.json ({err})") from err
    ours = sorted(k for k in LLAVA_CLASSES if k.startswith("llava_"))
    if model_type == NATIVE_MODEL_TYPE:
        if model_base is not None:
            raise ValueError(f"{flag} {path!r} is a native llava-hf checkpoint; its --model_base_* flag applies "
                             "only to this project's LoRA / projector-only checkpoints. Drop it.")
        from transformers import LlavaForConditionalGeneration

        from llava.utils.image_processor import load_image_processor

        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
        processor = load_image_processor(path)
        aspect = "pad" if getattr(processor, "do_pad", False) else None
        _drop_language_model(model, native=True)
        model.to(dev).eval()
        return HfLlavaModel(model, processor, aspect, path, None, dev, torch_dtype)
    if model_type in ours:
        from llava.model.builder import load_pretrained_model

        _, model, processor, _ = load_pretrained_model(path, model_base, None, device=str(dev), torch_dtype=torch_dtype)
        if processor is None:
            raise ValueError(f"{flag} {path!r}: the checkpoint has no vision tower (mm_vision_tower unset)")
        _drop_language_model(model, native=False)
        aspect = getattr(model.config, "image_aspect_ratio", None)
        return ProjectLlavaModel(model, processor, aspect, path, model_base, dev, torch_dtype)
    raise ValueError(
        f"{flag} {path!r}: config model_type {model_type!r} is not a LLaVA checkpoint; expected "
        f"{NATIVE_MODEL_TYPE!r} (transformers llava-hf) or one of this project's {', '.join(ours)}"
    )


def preprocess_mismatches(a: EmbeddingModel, b: EmbeddingModel) -> list[str]:
    """Settings where ``b``'s preprocessing differs from ``a``'s (``key: a=... b=...``)."""
    sa, sb = a.preprocess_spec(), b.preprocess_spec()
    return [f"{k}: X={sa.get(k)!r} y={sb.get(k)!r}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]


def probe_shape(model: EmbeddingModel, pixels: torch.Tensor) -> tuple[int, int]:
    """``(tokens, hidden)`` of ``model``'s embeddings for one preprocessed image."""
    out = model.embed(pixels[:1])
    if out.ndim != 3:
        raise ValueError(f"{model.path}: expected (N, T, hidden) image features, got shape {tuple(out.shape)}")
    return int(out.shape[1]), int(out.shape[2])
