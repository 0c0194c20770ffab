"""Command-line argument dataclasses for training, with upstream LLaVA-1.5's flag names and defaults.

Three dataclasses are parsed by ``transformers.HfArgumentParser``: :class:`ModelArguments`,
:class:`DataArguments` and :class:`TrainingArguments` (a ``transformers.TrainingArguments``
subclass). :func:`validate_args` checks flag values right after parsing, before any model is
loaded, and raises ``ValueError`` naming the flag and what to do.

The add-on flags are not listed here: each add-on declares them in its own module and the
add-on registry composes them into ``ModelArguments`` (:func:`model_arguments_class`; with
``--mm_addon_modules`` the external add-ons' flags too). :func:`validate_args` checks them against
the vision tower's and the LLM's ``config.json`` (no weights) through the registry.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

import transformers

from llava.constants import DEFAULT_SELECT_LAYER, VALID_SELECT_FEATURES
from llava.data.launch_check import DEFAULT_MAX_IMAGE_PIXELS
from llava.data.packing import DEFAULT_PACKING_BUFFER
from llava.model.addons.base import Geometry
from llava.model.addons.registry import AddonRegistry

VALID_IMAGE_ASPECT_RATIOS = ("square", "pad")
VALID_PATCH_MERGE_TYPES = ("flat",)
VALID_BITS = (4, 8, 16)
VALID_QUANT_TYPES = ("nf4", "fp4")
VALID_LORA_BIAS = ("none", "all", "lora_only")
VALID_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class BaseModelArguments:
    """Which LLM, vision tower and projector to build, and what to train (upstream names).

    :data:`ModelArguments` adds the built-in add-ons' flags (:func:`model_arguments_class`).
    """

    model_name_or_path: str | None = field(default="facebook/opt-125m")
    version: str | None = field(default="v1", metadata={
        "help": "Conversation template name (plain for pretraining, v1 for finetuning). Upstream's default "
                "'v0' is the LLaVA-1.0 template, which this fork does not ship."})
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Train only the projector."})
    vision_tower: str | None = field(default=None)
    mm_vision_select_layer: int | None = field(default=DEFAULT_SELECT_LAYER)
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "Path to mm_projector.bin."})
    mm_projector_type: str | None = field(default="linear")
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    mm_patch_merge_type: str | None = field(default="flat")
    mm_vision_select_feature: str | None = field(default="patch")
    attn_implementation: str | None = field(default=None, metadata={
        "help": "LLM attention: sdpa, eager, flash_attention_2/3 or flex_attention (default: flash_attention_2 "
                "when flash-attn imports on a GPU, else sdpa)."})
    mm_addon_modules: str | None = field(default=None, metadata={
        "help": "Comma-separated importable modules that define ADDONS (add-ons from outside this package); "
                "their flags are listed by --help when this flag comes first. Recorded in config.json; "
                "loading such a checkpoint needs the same modules passed explicitly."})


def model_arguments_class(registry: AddonRegistry) -> type:
    """``ModelArguments`` with every add-on flag of ``registry``."""
    return registry.arguments_class(BaseModelArguments)


ModelArguments = model_arguments_class(AddonRegistry())
"""The model flags with the built-in add-ons (``model_arguments_class`` for external ones)."""




@dataclass
class DataArguments:
    """Where the LLaVA-format data lives and how images are prepared."""

    data_path: str | None = field(default=None, metadata={"help": "Path to the training data JSON."})
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    image_folder: str | None = field(default=None)
    image_aspect_ratio: str = "square"
    eval_data_path: str | None = field(default=None, metadata={
        "help": "Validation data JSON (same format as --data_path), evaluated at every --eval_strategy step: "
                "eval_loss, eval_accuracy (answer-token accuracy) and the auxiliary terms."})
    eval_image_folder: str | None = field(default=None, metadata={
        "help": "Images of --eval_data_path (default: --image_folder)."})
    skip_bad_samples: bool = field(
        default=False,
        metadata={"help": "Skip unreadable/invalid samples (found at launch where possible) instead of stopping; "
                  "each is listed in <output_dir>/skipped_samples.json (index, id, category, path)."},
    )
    max_image_pixels: int = field(default=DEFAULT_MAX_IMAGE_PIXELS, metadata={
        "help": "Largest image (width x height, read from its header at launch) a sample may have; larger ones are "
                "image_too_large (a decompression bomb). Default: PIL's limit. 0 turns the check off."})
    data_store_dir: str | None = field(default=None, metadata={
        "help": "Convert --data_path once (keyed by its SHA-256) into a memory-mapped store in this folder, which "
                "every rank and DataLoader worker reads instead of parsing the whole JSON (one copy per node, not "
                "per rank); an edited file gets a new store. Default: off (the JSON is read by every rank)."})
    allow_data_change: bool = field(default=False, metadata={
        "help": "Resume even when --data_path differs from the file the checkpoint was trained on (its SHA-256 "
                "is stored in each checkpoint); the sampler's indices then point at other samples."})
    allow_absolute_image_paths: bool = field(
        default=False,
        metadata={"help": "Accept 'image' paths that are absolute or climb out of --image_folder with '..' "
                  "(refused by default: a data file could otherwise open any file on the machine)."},
    )
    packing: bool = field(default=False, metadata={
        "help": "Pack whole samples into rows of up to --model_max_length tokens (each attends only to itself; "
                "a pack is one batch element). Off: upstream's padded batches."})
    packing_buffer_size: int | None = field(default=None, metadata={
        "help": f"--packing: samples per shuffled buffer that first-fit-decreasing packs (default "
                f"{DEFAULT_PACKING_BUFFER})."})
    packing_length_cache: str | None = field(default=None, metadata={
        "help": "--packing: JSON cache of per-sample token counts (default <output_dir>/packing_lengths.json)."})
    # Filled in by train() after the model is built; not command-line flags.
    image_processor: Any = field(default=None, init=False, repr=False)
    mm_use_im_start_end: bool = field(default=False, init=False)
    conv_version: str | None = field(default=None, init=False)
    num_image_tokens: int | None = field(default=None, init=False)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """``transformers.TrainingArguments`` plus upstream LLaVA's training flags."""

    cache_dir: str | None = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    trust_checkpoint: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint without verifying its llava_manifest.json digests and "
                  "without the restricted-unpickle check (only for checkpoints you made yourself)."},
    )
    model_max_length: int = field(
        default=512,
        metadata={"help": "Maximum sequence length; sequences are right padded (and possibly truncated)."},
    )
    double_quant: bool = field(
        default=True, metadata={"help": "Compress the quantization statistics through double quantization."}
    )
    quant_type: str = field(default="nf4", metadata={"help": "Quantization data type: `fp4` or `nf4`."})
    bits: int = field(default=16, metadata={"help": "How many bits to use (4, 8 or 16)."})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = field(default=False)
    progress_label: str | None = field(default=None, metadata={
        "help": "Name shown on the [progress] lines (default: the output folder's name)."})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "Peak dense TFLOP/s of one device for the logged MFU (default: from the table of known GPUs in "
                "llava/train/throughput.py; CPUs and unknown GPUs log no MFU unless this is set, and then do "
                "against it)."})
    # Upstream scripts' flags that transformers 5 renamed; accepted and mapped onto the new names.
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "Upstream alias: warm up over this fraction of the steps."}
    )
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Upstream alias: eval_strategy."})

    def __post_init__(self) -> None:
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            if self.warmup_steps:
                raise ValueError("--warmup_ratio and --warmup_steps are both set; pass only one.")
            self.warmup_steps = self.warmup_ratio
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        super().__post_init__()


def _choice(flag: str, value: Any, valid: tuple[Any, ...]) -> None:
    if value not in valid:
        raise ValueError(f"--{flag} {value!r} is not supported; valid values: {', '.join(map(str, valid))}")


def _check_projector_type(projector_type: str | None) -> None:
    """Validate through the projector registry itself (no duplicated key list)."""
    if projector_type is None:
        raise ValueError("--mm_projector_type must be set (e.g. 'linear' or 'mlp2x_gelu').")
    from llava.model.multimodal_projector.builder import make_projector

    try:
        make_projector(projector_type, 4, 4)
    except ValueError as err:
        raise ValueError(f"--mm_projector_type: {err}") from err


def _check_template(version: str | None) -> None:
    from llava.conversation import conv_templates as templates

    if version not in templates:
        raise ValueError(
            f"--version {version!r} is not a known conversation template; "
            f"valid: {', '.join(sorted(templates))}"
        )


def _check_paths(model_args: ModelArguments, data_args: DataArguments) -> None:
    if data_args.data_path is None:
        raise ValueError("--data_path is required: point it at a LLaVA-format JSON file.")
    if not os.path.isfile(data_args.data_path):
        raise ValueError(f"--data_path {data_args.data_path!r} does not exist or is not a file.")
    if data_args.image_folder is not None and not os.path.isdir(data_args.image_folder):
        raise ValueError(f"--image_folder {data_args.image_folder!r} is not a directory.")
    adapter = model_args.pretrain_mm_mlp_adapter
    if adapter is not None and not os.path.isfile(adapter):
        raise ValueError(
            f"--pretrain_mm_mlp_adapter {adapter!r} does not exist; pass the mm_projector.bin written by the "
            "pretrain stage (scripts/v1_5/pretrain.sh)."
        )


def _check_training(training_args: TrainingArguments) -> None:
    _choice("bits", training_args.bits, VALID_BITS)
    _choice("quant_type", training_args.quant_type, VALID_QUANT_TYPES)
    _choice("lora_bias", training_args.lora_bias, VALID_LORA_BIAS)
    if training_args.bits in (4, 8) and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"--bits {training_args.bits} needs the `bitsandbytes` package, which is not importable; "
            "install it (pip install bitsandbytes) or train with --bits 16."
        )
    if training_args.model_max_length <= 0:
        raise ValueError(f"--model_max_length must be positive, got {training_args.model_max_length}.")
    if training_args.lora_enable:
        if training_args.lora_r <= 0:
            raise ValueError(f"--lora_r must be positive, got {training_args.lora_r}.")
        if not 0.0 <= training_args.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {training_args.lora_dropout}.")
        if training_args.lora_weight_path and not os.path.exists(training_args.lora_weight_path):
            raise ValueError(f"--lora_weight_path {training_args.lora_weight_path!r} does not exist.")
    if training_args.mm_projector_lr is not None and training_args.mm_projector_lr <= 0:
        raise ValueError(f"--mm_projector_lr must be positive when set, got {training_args.mm_projector_lr}.")


def validate_args(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> None:
    """Check flag values and their combinations; raise ``ValueError`` naming the flag and the fix."""
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a local LLM folder or a Hub id).")
    _choice("image_aspect_ratio", data_args.image_aspect_ratio, VALID_IMAGE_ASPECT_RATIOS)
    _choice("mm_vision_select_feature", model_args.mm_vision_select_feature, VALID_SELECT_FEATURES)
    _choice("mm_patch_merge_type", model_args.mm_patch_merge_type, VALID_PATCH_MERGE_TYPES)
    if model_args.attn_implementation is not None:
        _choice("attn_implementation", model_args.attn_implementation, VALID_ATTENTION)
    _check_projector_type(model_args.mm_projector_type)
    _check_template(model_args.version)
    _check_paths(model_args, data_args)
    _check_training(training_args)
    if model_args.tune_mm_mlp_adapter and training_args.freeze_mm_mlp_adapter:
        raise ValueError("--tune_mm_mlp_adapter True and --freeze_mm_mlp_adapter True contradict; drop one.")
    if model_args.tune_mm_mlp_adapter and training_args.lora_enable:
        raise ValueError(
            "--tune_mm_mlp_adapter True trains only the projector, so --lora_enable True would train nothing "
            "extra; use one or the other."
        )
    needs_projector = model_args.tune_mm_mlp_adapter or model_args.pretrain_mm_mlp_adapter
    if model_args.vision_tower is None and needs_projector:
        raise ValueError(
            "--tune_mm_mlp_adapter / --pretrain_mm_mlp_adapter need a projector, which needs --vision_tower."
        )
    check_addons(model_args)
    _check_packing(model_args, data_args)
    _check_validation(data_args, training_args)


def _check_validation(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """``--eval_data_path`` and ``--eval_strategy`` go together; the eval paths must exist."""
    path, folder = data_args.eval_data_path, data_args.eval_image_folder
    evaluating = training_args.eval_strategy != "no"
    if path is None:
        if folder is not None:
            raise ValueError("--eval_image_folder has no effect without --eval_data_path: add the validation "
                             "data file or drop --eval_image_folder.")
        if evaluating:
            raise ValueError(f"--eval_strategy {training_args.eval_strategy.value} needs validation data: pass "
                             "--eval_data_path (a LLaVA-format JSON file), or --eval_strategy no.")
        return
    if not os.path.isfile(path):
        raise ValueError(f"--eval_data_path {path!r} does not exist or is not a file.")
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"--eval_image_folder {folder!r} is not a directory.")
    if not evaluating:
        raise ValueError("--eval_data_path is set but --eval_strategy is no, so it would never be evaluated: "
                         "pass --eval_strategy steps --eval_steps N (or --eval_strategy epoch).")


def _check_packing(model_args: ModelArguments, data_args: DataArguments) -> None:
    if not data_args.packing:
        for flag in ("packing_buffer_size", "packing_length_cache"):
            if getattr(data_args, flag) is not None:
                raise ValueError(f"--{flag} has no effect without --packing True: add that flag or drop --{flag}.")
        return
    if model_args.vision_tower is None:
        raise ValueError("--packing True needs the LLaVA model class, which --vision_tower selects; "
                         "pass --vision_tower or train without --packing.")
    if data_args.packing_buffer_size is not None and data_args.packing_buffer_size < 1:
        raise ValueError(f"--packing_buffer_size must be >= 1, got {data_args.packing_buffer_size}.")


def _llm_width(model_name_or_path: str) -> int | None:
    """The LLM's hidden size from its config.json, or None when it cannot be read here."""
    try:
        cfg = transformers.AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        return None
    return getattr(cfg, "hidden_size", None)


def check_addons(model_args: Any) -> None:
    """Dependent flags, values and geometry of every add-on (config.json files only, no weights)."""
    from llava.model.multimodal_encoder.builder import vision_tower_geometry

    registry = AddonRegistry.with_modules(getattr(model_args, "mm_addon_modules", None))
    on = registry.enabled_from_args(model_args)
    if not on:
        return
    if model_args.vision_tower is None:
        names = ", ".join(f"--{a.switch}" for a, _ in on)
        raise ValueError(f"{names} act(s) on image tokens and need(s) --vision_tower.")
    layers, side, width = vision_tower_geometry(model_args.vision_tower)
    geo = Geometry(tower_layers=layers, tower_side=side, tower_width=width,
                   has_cls=getattr(model_args, "mm_vision_select_feature", "patch") == "cls_patch",
                   llm_width=_llm_width(model_args.model_name_or_path))
    registry.validate(on, geo)
