"""llava-hf interop: our checkpoints <-> transformers' ``LlavaForConditionalGeneration`` folders.

:func:`convert_to_hf` writes a model folder with its ``LlavaProcessor`` whose ids, logits and greedy answers
equal ours on the same image and prompt text; :func:`convert_from_hf` turns a llava-hf folder (ours or a release, either
weight layout) into our format, the tower saved as a CLIP folder inside it. Ours -> hf -> ours gives
bit-identical weights and the same config (but ``mm_vision_tower``).

Keys (module names, ours -> hf; the reverse is the inverse): ``model.vision_tower.vision_tower.*`` ->
``model.vision_tower.*``; ``model.mm_projector.0.*`` / ``.2.*`` -> ``model.multi_modal_projector.linear_1.*``
/ ``linear_2.*``; ``lm_head.*`` -> ``lm_head.*``; any other ``model.*`` -> ``model.language_model.*``
(transformers 5 writes them to disk as ``language_model.model.*``, ``language_model.lm_head.*``,
``multi_modal_projector.*``, ``vision_tower.*``).

Config: ``mm_vision_select_layer`` -> ``vision_feature_layer`` (an int); the multi-layer add-on's
``mm_multilayer_select`` -> ``vision_feature_layer`` (a list: both concatenate those hidden states along
channels and drop CLS); ``mm_vision_select_feature`` ``patch`` / ``cls_patch`` -> ``vision_feature_select_strategy``
``default`` / ``full``; ``image_aspect_ratio`` ``pad`` -> the ``LlavaImageProcessor`` option ``do_pad`` (the
mean-colour square padding ours does; its PIL backend gives our pixels exactly, the torchvision one
resizes slightly differently). The chat template: the tokenizer's own, else LLaVA-1.5's vicuna_v1
(:func:`vicuna_chat_template`); the reverse keeps a template only when it is not ours and renders
string contents (what our tools pass).

The image token: ours is the id -200, expanded inside the model; llava-hf needs a real ``<image>``
token. It is added as the last token (unless the tokenizer has one), its input and output embedding
rows the mean of the existing rows (the input row never reaches the model: llava-hf overwrites those
positions with image features; the output row gives ``<image>`` an average logit). The reverse drops
that row when ``<image>`` is the last token of the tokenizer and of the embeddings; otherwise
(llava-hf releases: ``<image>``, ``<pad>``, padding rows) it keeps the vocabulary, which ours handles.
The exported ``LlavaProcessor`` gives, from the same prompt text, the ids training and ``run_llava`` give (checked
on the saved folder; :mod:`llava.model.hf_tokenizer` has the tokenizer side); the reverse notes where a llava-hf
processor tokenizes differently from ours.

Refused (:class:`HfInteropError`, naming it): the add-ons that change the image tokens (normalization,
compression, 2D RoPE, interleave, coordinates, registers, the permutation probe, ``mm_multilayer_post_norm``,
add-ons from outside the package), projectors other than ``mlp2x_gelu``, ``mm_use_im_start_end``,
patch-merge types other than ``flat``. The cosine regularizer is training-only: dropped with a note
(``model.mm_projector_cos.*`` is not converted).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN

from .addons.base import write_config
from .addons.registry import MODULES_KEY, AddonRegistry, builtin_addon
from .hf_tokenizer import (
    IMAGE_PROCESSOR_KEYS,
    HfInteropError,
    add_image_token,
    check_saved_processor,
    hf_processor,
    keeps_chat_template,
    parity_problem,
    save_tokenizer,
    vicuna_chat_template,
)

OURS_TO_HF: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.", "model.vision_tower."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("lm_head.", "lm_head."),
    ("model.", "model.language_model."),
)
"""(our key prefix, llava-hf key prefix), most specific first."""
HF_TO_OURS: tuple[tuple[str, str], ...] = tuple((hf, ours) for ours, hf in OURS_TO_HF)
TRAINING_ONLY_ADDONS = (builtin_addon("cosine"),)
MULTILAYER = builtin_addon("multilayer")
"""Add-ons with no effect on inference outputs: dropped (with a note) instead of refused."""
SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
EMBEDDING_KEYS = ("model.embed_tokens.weight", "lm_head.weight")
VERY_LARGE_LENGTH = 10**9
"""A tokenizer ``model_max_length`` at or above this is transformers' "no limit" placeholder."""


@dataclass
class ConversionResult:
    """Where the converted folder is and what the user should know about it."""

    output: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VisionSpec:
    """The llava-hf vision settings of one of our configs."""

    feature_layer: int | list[int]
    select_strategy: str
    dropped_modules: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def map_key(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """``key`` with its first matching prefix in ``pairs`` replaced (an error when none matches)."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    raise HfInteropError(f"weight {key!r} has no counterpart in the other format")


# ---------------------------------------------------------------------------------------------- ours -> hf
def vision_spec(config: Any) -> VisionSpec:
    """The llava-hf vision settings of our ``config``; :class:`HfInteropError` listing all that cannot map."""
    problems: list[str] = []
    external = getattr(config, MODULES_KEY, None)
    if external:
        _refuse([f"add-ons from the module(s) {', '.join(external)} ({MODULES_KEY})"])
    projector = getattr(config, "mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        problems.append(f"mm_projector_type {projector!r} (llava-hf's projector is Linear-GELU-Linear: mlp2x_gelu)")
    if getattr(config, "mm_use_im_start_end", False):
        problems.append("mm_use_im_start_end (image start/end tokens)")
    if getattr(config, "mm_patch_merge_type", "flat") not in (None, "flat"):
        problems.append(f"mm_patch_merge_type {config.mm_patch_merge_type!r} (only 'flat')")
    feature = getattr(config, "mm_vision_select_feature", "patch")
    layer: int | list[int] = int(getattr(config, "mm_vision_select_layer", -2))
    dropped: list[str] = []
    notes: list[str] = []
    for addon, cfg in AddonRegistry().pipeline(config).enabled:
        if addon is MULTILAYER:
            if cfg.mm_multilayer_post_norm:
                problems.append("mm_multilayer_post_norm of the multilayer add-on (post-layernorm on each layer)")
            layer = [int(i) for i in cfg.mm_multilayer_select]
        elif addon in TRAINING_ONLY_ADDONS:
            dropped += [f"model.{m}." for m in addon.modules]
            notes.append(f"add-on '{addon.name}' (--{addon.switch}) is training-only: its modules "
                         f"({', '.join(f'model.{m}.*' for m in addon.modules)}) are not converted")
        else:
            problems.append(f"add-on '{addon.name}' (--{addon.switch})")
    if problems:
        _refuse(problems)
    return VisionSpec(layer, SELECT_STRATEGY[feature], tuple(dropped), tuple(notes))


def _refuse(problems: list[str]) -> NoReturn:
    raise HfInteropError(
        f"LlavaForConditionalGeneration cannot express {'; '.join(problems)}: convert a checkpoint trained "
        "without it, or keep using this codebase to run it.")


def _append_mean_row(weight: torch.Tensor) -> torch.Tensor:
    mean = weight.detach().float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight.detach(), mean], dim=0)


def to_hf_state_dict(state: Mapping[str, torch.Tensor], spec: VisionSpec, add_image_row: bool) -> dict:
    """Our state dict (tower included) under llava-hf keys; ``add_image_row`` appends the ``<image>`` rows
    (the mean of the existing rows)."""
    out = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in spec.dropped_modules):
            continue
        if add_image_row and key in EMBEDDING_KEYS:
            value = _append_mean_row(value)
        out[map_key(key, OURS_TO_HF)] = value
    return out


def text_config_of(config: Any, family_config_class: type, vocab_size: int) -> Any:
    """The family's own config (e.g. ``LlamaConfig``) holding the LLM fields of our ``config``."""
    known = set(family_config_class().to_dict())
    fields = {k: v for k, v in config.to_dict().items()
              if k in known and k not in ("model_type", "architectures", "transformers_version")}
    fields["vocab_size"] = vocab_size
    return family_config_class(**fields)


def hf_config(config: Any, tower_config: Any, family_config_class: type, spec: VisionSpec,
              image_token_id: int, vocab_size: int) -> Any:
    """The ``LlavaConfig`` of our ``config`` (with the vocabulary grown to ``vocab_size``)."""
    from transformers import LlavaConfig

    side = tower_config.image_size // tower_config.patch_size
    text = text_config_of(config, family_config_class, vocab_size)
    return LlavaConfig(
        vision_config=copy.deepcopy(tower_config), text_config=text, image_token_index=image_token_id,
        image_seq_length=side * side + (spec.select_strategy == "full"), projector_hidden_act="gelu",
        vision_feature_select_strategy=spec.select_strategy, vision_feature_layer=spec.feature_layer,
        multimodal_projector_bias=True, tie_word_embeddings=bool(text.tie_word_embeddings))


def _checkpoint_dtype(raw: dict | None) -> torch.dtype:
    """The dtype ``config.json`` records (``dtype``, or the older ``torch_dtype``); float32 if none."""
    value = (raw or {}).get("dtype") or (raw or {}).get("torch_dtype")
    value = getattr(torch, value, None) if isinstance(value, str) else None
    return value if isinstance(value, torch.dtype) else torch.float32


def _require_empty(output: str, flag: str) -> None:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise HfInteropError(f"{flag} {output!r} exists and is not empty; choose a new folder.")


def _build_on_meta(cls: type, config: Any, state: Mapping[str, torch.Tensor], tied: bool,
                   prepare: Callable[[Any], None] | None = None) -> Any:
    """``cls(config)`` without allocating random weights, ``prepare(model)``, then ``state`` assigned (all keys)."""
    with torch.device("meta"):
        model = cls(config)
    if prepare is not None:
        prepare(model)
    model.load_state_dict(dict(state), strict=True, assign=True)
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model.eval()


def convert_to_hf(model_path: str, output: str, model_base: str | None = None) -> ConversionResult:
    """Write our checkpoint ``model_path`` as a llava-hf folder ``output`` (model, processor, template)."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    from llava.utils.atomic import atomic_path

    from .builder import load_pretrained_model
    from .reference_layout import is_reference_config, read_config_dict

    _require_empty(output, "--output")
    raw = read_config_dict(model_path)
    if not is_reference_config(raw):  # refuse before any weight loads
        vision_spec(AutoConfig.from_pretrained(model_path))
    tokenizer, model, image_processor, _ = load_pretrained_model(model_path, model_base, device="cpu",
                                                                 torch_dtype=_checkpoint_dtype(raw))
    config, tower_config, dtype = model.config, model.get_vision_tower().config, model.dtype
    spec = vision_spec(config)
    tokenizer_max = getattr(config, "tokenizer_model_max_length", None)
    if isinstance(tokenizer_max, int) and tokenizer_max > 0:
        tokenizer.model_max_length = tokenizer_max
    notes = list(spec.notes)
    ours_tokenizer = copy.deepcopy(tokenizer)  # training's tokenization, the processor's reference
    if getattr(tokenizer, "chat_template", None):
        notes.append("kept the tokenizer's own chat template for the processor too (LLaVA-1.5's vicuna_v1 template "
                     "is written for tokenizers without one); pass it string message contents if it needs them")
    else:
        tokenizer.chat_template = vicuna_chat_template()
    image_id, added, aligned = add_image_token(tokenizer, model.get_input_embeddings().weight.shape[0], model_path)
    rows = model.get_input_embeddings().weight.shape[0] + added
    tied = bool(getattr(config, "tie_word_embeddings", False))
    family = type(model)._family_causal_lm_class().config_class
    hf_cfg = hf_config(config, tower_config, family, spec, image_id, rows)
    hf_cfg.dtype = dtype
    hf_model = _build_on_meta(LlavaForConditionalGeneration, hf_cfg,
                              to_hf_state_dict(model.state_dict(), spec, added), tied)
    hf_model.generation_config = copy.deepcopy(model.generation_config)
    processor = hf_processor(tokenizer, image_processor, config, tower_config, spec.select_strategy)
    with atomic_path(output) as tmp:
        hf_model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        check_saved_processor(tmp, ours_tokenizer, model_path)
    notes.append(f"{DEFAULT_IMAGE_TOKEN} is token {image_id}" + (" (new embedding rows: the mean)" if added else ""))
    if aligned:
        notes.append(f"the tokenizer inserts a space after {DEFAULT_IMAGE_TOKEN} (a normalizer) so that LlavaProcessor "
                     "tokenizes the text after an image as training does")
    return ConversionResult(output, notes)


# ---------------------------------------------------------------------------------------------- hf -> ours
def check_hf_config(hf_cfg: Any) -> None:
    """:class:`HfInteropError` listing what of a ``LlavaConfig`` our format cannot express."""
    from llava.model import LLAVA_CLASSES

    from .multimodal_encoder.builder import VISION_TOWERS

    problems = []
    families = sorted(k for k, cls in LLAVA_CLASSES.items() if cls.config_class.model_type != k)
    if hf_cfg.text_config.model_type not in families:
        problems.append(f"the language model type {hf_cfg.text_config.model_type!r} (supported: "
                        f"{', '.join(families)})")
    if hf_cfg.vision_config.model_type not in VISION_TOWERS:
        problems.append(f"the vision tower type {hf_cfg.vision_config.model_type!r} (supported: CLIP)")
    if hf_cfg.projector_hidden_act != "gelu" or not hf_cfg.multimodal_projector_bias:
        problems.append(f"a projector with activation {hf_cfg.projector_hidden_act!r} and bias="
                        f"{hf_cfg.multimodal_projector_bias} (ours: gelu with bias, mlp2x_gelu)")
    if hf_cfg.vision_feature_select_strategy not in ("default", "full"):
        problems.append(f"vision_feature_select_strategy {hf_cfg.vision_feature_select_strategy!r}")
    if problems:
        raise HfInteropError(f"our format cannot express {'; '.join(problems)}.")


def ours_config(hf_cfg: Any, config_class: type, tower_path: str, image_aspect_ratio: str,
                max_length: int, vocab_size: int) -> Any:
    """Our config (``config_class``, e.g. ``llava_llama``) for a ``LlavaConfig``."""
    fields = {k: v for k, v in hf_cfg.text_config.to_dict().items()
              if k not in ("model_type", "architectures", "transformers_version")}
    fields["vocab_size"] = vocab_size
    config = config_class(**fields)
    layer = hf_cfg.vision_feature_layer
    strategy = {v: k for k, v in SELECT_STRATEGY.items()}[hf_cfg.vision_feature_select_strategy]
    extra = dict(mm_vision_tower=tower_path, use_mm_proj=True, mm_projector_type="mlp2x_gelu",
                 mm_vision_select_layer=layer if isinstance(layer, int) else -2,
                 mm_vision_select_feature=strategy, mm_patch_merge_type="flat", image_aspect_ratio=image_aspect_ratio,
                 tokenizer_padding_side="right", tokenizer_model_max_length=max_length, tune_mm_mlp_adapter=False,
                 freeze_mm_mlp_adapter=False, mm_use_im_start_end=False, mm_use_im_patch_token=False,
                 mm_projector_lr=None)
    for key, value in extra.items():
        setattr(config, key, value)
    if not isinstance(layer, int):
        write_config(config, MULTILAYER.Config(True, [int(i) for i in layer], False))
    config.mm_hidden_size = AddonRegistry().pipeline(config).input_width(hf_cfg.vision_config.hidden_size)
    return config


def ours_state_dict(state: Mapping[str, torch.Tensor], drop_last_row: bool) -> dict:
    """A llava-hf state dict under our keys (``drop_last_row``: without the ``<image>`` rows)."""
    out = {}
    for key, value in state.items():
        ours = map_key(key, HF_TO_OURS)
        out[ours] = value[:-1] if drop_last_row and ours in EMBEDDING_KEYS else value
    return out


def _save_tower(hf_model: Any, image_processor: Any, folder: Path) -> None:
    """The llava-hf vision tower as a CLIPVisionModel folder with a CLIP image-processor config."""
    from transformers import CLIPImageProcessorPil

    hf_model.model.vision_tower.save_pretrained(folder)
    settings = image_processor.to_dict()
    CLIPImageProcessorPil(**{k: settings[k] for k in IMAGE_PROCESSOR_KEYS if k in settings}).save_pretrained(folder)


def _image_processor_of(processor: Any, hf_path: str) -> Any:
    image_processor = getattr(processor, "image_processor", None)
    settings = image_processor.to_dict() if image_processor is not None else {}
    if "crop_size" not in settings or "shortest_edge" not in (settings.get("size") or {}):
        raise HfInteropError(f"{hf_path}: our format needs a CLIP-style image processor (resize the shortest edge, "
                             f"center crop); this one is {type(image_processor).__name__}.")
    return image_processor


def convert_from_hf(hf_path: str, output: str, image_aspect_ratio: str | None = None) -> ConversionResult:
    """Write the llava-hf folder ``hf_path`` in our format to ``output`` (tower in ``output/vision_tower``).

    ``image_aspect_ratio``: ``pad`` or ``square``; default: ``pad`` when the processor pads (``do_pad``).
    llava-1.5-hf releases ship a non-padding processor although LLaVA-1.5 was trained with ``pad``.
    """
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from llava.model import llava_class_for
    from llava.utils.atomic import atomic_path

    if image_aspect_ratio not in (None, "pad", "square"):
        raise HfInteropError(f"--image-aspect-ratio {image_aspect_ratio!r} is not valid: give pad or square.")
    _require_empty(output, "--output")
    hf_cfg = AutoConfig.from_pretrained(hf_path)
    if hf_cfg.model_type != "llava":
        raise HfInteropError(f"{hf_path} has model_type {hf_cfg.model_type!r}; convert_from_hf reads llava-hf "
                             "(LlavaForConditionalGeneration) folders only.")
    check_hf_config(hf_cfg)
    processor = AutoProcessor.from_pretrained(hf_path)
    image_processor = _image_processor_of(processor, hf_path)
    aspect = image_aspect_ratio or ("pad" if getattr(image_processor, "do_pad", False) else "square")
    tokenizer = processor.tokenizer
    hf_model = LlavaForConditionalGeneration.from_pretrained(hf_path, dtype="auto").eval()
    image_id, rows = hf_cfg.image_token_id, hf_model.get_input_embeddings().weight.shape[0]
    drop = image_id == rows - 1 == len(tokenizer) - 1 and bool(getattr(tokenizer, "is_fast", False))
    max_length = tokenizer.model_max_length
    if not (isinstance(max_length, int) and 0 < max_length < VERY_LARGE_LENGTH):
        max_length = hf_cfg.text_config.max_position_embeddings
    cls = llava_class_for(hf_cfg.text_config.model_type)
    final_tower = str(Path(output).resolve() / "vision_tower")
    notes = [f"vision tower saved to {final_tower} (config mm_vision_tower; move the folder -> update it)"]
    keep_template = keeps_chat_template(tokenizer)
    if keep_template:
        notes.append("kept the tokenizer's chat template: our tools then default to --conv-mode chat_template")
    elif getattr(tokenizer, "chat_template", None):
        notes.append("the chat template is not kept: prompts come from llava.conversation (LLaVA-1.5: --conv-mode "
                     "vicuna_v1)")
    if not drop:
        notes.append(f"kept the vocabulary of {rows} rows and {DEFAULT_IMAGE_TOKEN} (id {image_id}; our prompts never "
                     "produce it)")
    with atomic_path(output) as tmp:
        tmp.mkdir()
        _save_tower(hf_model, image_processor, tmp / "vision_tower")
        config = ours_config(hf_cfg, cls.config_class, str(tmp / "vision_tower"), aspect, max_length, rows - drop)
        model = _build_on_meta(cls, config, ours_state_dict(hf_model.state_dict(), drop), config.tie_word_embeddings,
                               lambda m: m.get_vision_tower().load_model())  # the tower from its saved folder
        config.mm_vision_tower = final_tower
        model.generation_config = copy.deepcopy(hf_model.generation_config)
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, image_id if drop else None, keep_template)
        notes += _parity_notes(tokenizer, tmp)
    return ConversionResult(output, notes)


def _parity_notes(hf_tokenizer: Any, folder: Path) -> list[str]:
    """A note when the llava-hf processor's tokenizer and our saved one (chunks between images, as training and
    ``run_llava`` tokenize) give different ids for the same text."""
    from transformers import AutoTokenizer

    problem = parity_problem(hf_tokenizer, AutoTokenizer.from_pretrained(folder))
    if problem is None:
        return []
    return [f"our tools tokenize text next to {DEFAULT_IMAGE_TOKEN} differently from this folder's LlavaProcessor "
            f"({problem}); answers can differ from the llava-hf model's. convert_to_hf of the converted model "
            "exports a processor that matches ours"]
