"""Training entry point with upstream LLaVA-1.5's flow and flags.

``python llava/train/train.py --model_name_or_path ... --vision_tower ... --data_path ...`` or,
for multi-process runs, ``deepspeed llava/train/train_mem.py ...`` (which picks the attention
implementation). Flow: parse -> validate -> load the LLM (LLaVA class chosen by the LLM's exact
``model_type``) -> optional k-bit / gradient checkpointing / LoRA -> tokenizer -> vision modules
and freezing rules -> data -> :class:`~llava.train.trainer.LLaVATrainer` -> auto-resume from the
newest complete ``checkpoint-*`` -> final save in the layout that matches the run:
projector-only (``mm_projector.bin``), LoRA (adapter + ``non_lora_trainables.bin``) or a full
``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python llava/train/train.py`: make `llava` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch
import transformers

from llava.model.llava_arch import image_tokens_per_sample
from llava.train.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    model_arguments_class,
    validate_args,
)
from llava.utils.run_lock import release_lock

logger = logging.getLogger("llava.train")



def compute_dtype_for(training_args: TrainingArguments) -> torch.dtype:
    """bf16 / fp16 when asked for, else fp32 (CPU runs)."""
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def _quantization_kwargs(training_args: TrainingArguments, dtype: torch.dtype,
                         skip_modules: list[str]) -> dict[str, Any]:
    if training_args.bits not in (4, 8):
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"--bits {training_args.bits} needs bitsandbytes, which failed to import ({err}); "
            "install it (pip install bitsandbytes, CUDA GPU required) or use --bits 16."
        ) from err
    return {
        "device_map": {"": training_args.device},
        "quantization_config": transformers.BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4,
            load_in_8bit=training_args.bits == 8,
            llm_int8_skip_modules=skip_modules,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        ),
    }


def load_model(model_args: ModelArguments, training_args: TrainingArguments,
               attn_implementation: str | None) -> transformers.PreTrainedModel:
    """The LLaVA class for the LLM's ``model_type`` when a vision tower is set, else the plain LLM."""
    from llava.model.addons.registry import AddonRegistry

    dtype = compute_dtype_for(training_args)
    registry = AddonRegistry.with_modules(model_args.mm_addon_modules)
    skip = ["mm_projector", *registry.module_attributes()]  # bitsandbytes takes module names
    kwargs: dict[str, Any] = {"cache_dir": training_args.cache_dir,
                              "dtype": torch.bfloat16 if training_args.bf16 else torch.float32,
                              **_quantization_kwargs(training_args, dtype, skip)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    path = model_args.model_name_or_path
    if model_args.vision_tower is None:
        return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    from llava.model import llava_class_for

    config = transformers.AutoConfig.from_pretrained(path, cache_dir=training_args.cache_dir)
    cls = llava_class_for(config.model_type)
    return cls.from_pretrained(path, config=cls.config_from_llm(config), addon_modules=registry.external, **kwargs)


def _not_for_lora(model: torch.nn.Module) -> set[int]:
    """Object ids of every module inside the vision tower, the projector side and the LM head."""
    roots = [model.get_output_embeddings()]
    get_model = getattr(model, "get_model", None)
    base = get_model() if get_model is not None else None
    if base is not None and hasattr(base, "get_vision_tower"):
        roots.append(base.get_vision_tower())
        if getattr(base, "mm_projector", None) is not None:
            roots += base.projector_modules()
    return {id(m) for root in roots if root is not None for m in root.modules()}


def find_all_linear_names(model: torch.nn.Module) -> list[str]:
    """Short names of the LLM's linear layers for LoRA (projector side, tower and lm_head excluded)."""
    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb
    except ImportError:
        bnb = None
    if bnb is not None:
        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    excluded = _not_for_lora(model)
    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear_types) and id(module) not in excluded
    }
    return sorted(names)


def apply_lora(model: Any, training_args: TrainingArguments) -> Any:
    """Wrap ``model`` with a PEFT LoRA adapter on every LLM linear layer."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=find_all_linear_names(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if training_args.bits == 16 and training_args.bf16:
        model.to(torch.bfloat16)
    logger.info("adding LoRA adapters (r=%d, alpha=%d) to %s", lora_config.r, lora_config.lora_alpha,
                ", ".join(sorted(lora_config.target_modules)))
    return get_peft_model(model, lora_config)


def load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments,
                   model: Any) -> transformers.PreTrainedTokenizerBase:
    """Right-padding tokenizer with ``model_max_length``; give it a pad token the way upstream does."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        use_fast=False,
    )
    if tokenizer.pad_token is not None:
        return tokenizer
    if model_args.version == "v0":
        # upstream v0: a dedicated [PAD] token, new embedding rows set to the mean embedding
        added = tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model.resize_token_embeddings(len(tokenizer))
        if added:
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                data = emb.weight.data
                data[-added:] = data[:-added].mean(dim=0, keepdim=True)
    elif tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # llama-style tokenizers
    else:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def setup_vision(model: Any, tokenizer: Any, model_args: ModelArguments, data_args: DataArguments,
                 training_args: TrainingArguments) -> None:
    """Build/load tower + projector, apply the freezing rules, fill data_args and the config fields."""
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp or None)
    tower = model.get_vision_tower()
    if not tower.is_loaded:
        tower.load_model()
    tower.to(dtype=compute_dtype_for(training_args), device=training_args.device)

    data_args.image_processor = tower.image_processor
    data_args.is_multimodal = True
    data_args.mm_use_im_start_end = model_args.mm_use_im_start_end

    config = model.config
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = tokenizer.model_max_length
    projector_modules = model.get_model().projector_modules()  # projector + trainable add-ons

    config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        for module in projector_modules:
            module.requires_grad_(True)
    config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    if training_args.freeze_mm_mlp_adapter:
        for module in projector_modules:
            module.requires_grad_(False)
    if training_args.bits in (4, 8):
        for module in projector_modules:
            module.to(dtype=compute_dtype_for(training_args), device=training_args.device)

    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_projector_lr = training_args.mm_projector_lr
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    data_args.num_image_tokens = image_tokens_per_sample(model, tower)


def find_resume_checkpoint(output_dir: str) -> str | None:
    """Newest complete ``checkpoint-N`` in ``output_dir`` (:mod:`llava.train.checkpoint_check`)."""
    from llava.train.checkpoint_check import newest_complete_checkpoint

    return newest_complete_checkpoint(output_dir)


def _setup_logging(training_args: TrainingArguments) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def init_distributed(training_args: TrainingArguments) -> None:
    """Set up the process group before the model is built.

    ZeRO-3 partitions parameters while ``from_pretrained`` runs (``deepspeed.zero.Init``), which
    needs DeepSpeed's communication layer already up. On GPUs accelerate does this when the
    training arguments resolve their device; with ``--use_cpu`` it only starts ``torch.distributed``,
    so DeepSpeed's layer is started here (a no-op when it is already running).
    """
    _ = training_args.device  # resolves the distributed state (starts torch.distributed when launched)
    if training_args.deepspeed:
        import deepspeed

        deepspeed.init_distributed()
        from llava.utils.deepspeed_shm import release_allreduce_buffer

        release_allreduce_buffer()  # DeepSpeed's CPU backend never unlinks its 66 MiB /dev/shm segment


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag value`` or ``--flag=value``), or None."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def addon_modules_in(argv: list[str]) -> str | None:
    """The value of ``--mm_addon_modules`` in a command line."""
    return flag_value(argv, "--mm_addon_modules")


def build_parser(argv: list[str]) -> transformers.HfArgumentParser:
    """The training parser, with the flags of the add-ons named by ``--mm_addon_modules`` in ``argv``."""
    from llava.model.addons.registry import AddonRegistry

    model_cls = model_arguments_class(AddonRegistry.with_modules(addon_modules_in(argv)))
    return transformers.HfArgumentParser((model_cls, DataArguments, TrainingArguments))


def train(attn_implementation: str | None = None) -> None:
    """Parse the command line and run one training stage (pretrain, finetune, LoRA ...)."""
    from llava.train.usage import check_images_at_launch, parse_and_check

    argv = sys.argv[1:]
    model_args, data_args, training_args, records, eval_records = parse_and_check(build_parser, argv, validate_args)
    attn_implementation = model_args.attn_implementation or attn_implementation
    _setup_logging(training_args)
    if data_args.packing:
        attn_implementation = packed_attention_choice(attn_implementation)
    init_distributed(training_args)
    launch_problems = check_images_at_launch(records, eval_records, data_args, training_args.output_dir)
    lock = take_output_lock(training_args.output_dir)
    try:
        run_stage(model_args, data_args, training_args, records, eval_records, attn_implementation, launch_problems)
    finally:
        release_lock(lock)
    _shutdown_distributed()


def run_stage(model_args: Any, data_args: DataArguments, training_args: TrainingArguments, records: Any,
              eval_records: Any, attn_implementation: str | None, launch_problems: Any = None) -> None:
    """One stage on parsed arguments, holding the output folder's lock: resume check, model, data, train, save.

    ``launch_problems``: the launch image check (:class:`llava.train.usage.LaunchCheck`): the (train, eval)
    samples it found bad (``--skip_bad_samples``) and the header cache to save once the run is accepted."""
    from llava.train.data_fingerprint import check_same_data, fingerprint
    from llava.train.skips import report_skips, restore_skipped

    resume = find_resume_checkpoint(training_args.output_dir)
    check_resume_checkpoint(resume, training_args.trust_checkpoint)
    check_same_data(resume, data_args)
    if launch_problems is not None:
        launch_problems.save_header_cache()
    transformers.set_seed(training_args.seed)  # before any module is built: the projector's init is seeded

    model = prepare_model(model_args, training_args, attn_implementation)
    tokenizer = load_tokenizer(model_args, training_args, model)
    data_args.conv_version = model_args.version
    if model_args.vision_tower is not None:
        setup_vision(model, tokenizer, model_args, data_args, training_args)

    from llava.train.trainer import LLaVATrainer

    data_module = build_data_module(model, tokenizer, data_args, training_args, records, eval_records,
                                    launch_problems)
    trainer = LLaVATrainer(model=model, processing_class=tokenizer, args=training_args, **data_module)
    if training_args.should_save:
        trainer.data_fingerprint = fingerprint(data_args.data_path, getattr(records, "sha256", None))
    from llava.train.progress import ProgressCallback

    label = training_args.progress_label or os.path.basename(os.path.normpath(training_args.output_dir))
    trainer.add_callback(ProgressCallback(label))

    if resume is not None:
        logger.info("resuming from %s", resume)
        restore_skipped(data_module.get("train_dataset"), resume)
    fit(trainer, data_module["train_dataset"], resume)
    final_evaluation(trainer)
    trainer.save_state()

    model.config.use_cache = True
    trainer.save_model(training_args.output_dir)
    report_skips(data_module.get("train_dataset"), training_args)
    report_skips(data_module.get("eval_dataset"), training_args, "validation set: ")


def prepare_model(model_args: Any, training_args: TrainingArguments, attn_implementation: str | None) -> Any:
    """The model to train: loaded, backbone frozen or k-bit prepared as asked, LoRA applied."""
    model = load_model(model_args, training_args, attn_implementation)
    model.config.use_cache = False
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.torch_dtype = compute_dtype_for(training_args)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(training_args.gradient_checkpointing))
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    return model


def build_data_module(model: Any, tokenizer: Any, data_args: DataArguments, training_args: TrainingArguments,
                      records: Any, eval_records: Any, launch_problems: Any) -> dict[str, Any]:
    """The Trainer's datasets and collator: launch-check skips marked, the validation set prechecked, packed
    when ``--packing``."""
    from llava.data.supervised import check_eval_set, make_supervised_data_module

    data_module = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args, records=records,
                                              eval_records=eval_records)
    if launch_problems is not None:
        for key, problems in (("train_dataset", launch_problems.train), ("eval_dataset", launch_problems.eval)):
            for problem in problems:
                data_module[key].mark_bad(problem.index, problem.category)
    if data_module["eval_dataset"] is not None:
        check_eval_set(data_module["eval_dataset"])
    if data_args.packing:
        from llava.data.packing import packed_data_module
        from llava.model.packing import runs_per_sample

        data_module = packed_data_module(data_module, data_args, training_args,
                                         one_row=runs_per_sample(model.config._attn_implementation))
    return data_module


def fit(trainer: Any, dataset: Any, resume: str | None) -> None:
    """``trainer.train``; a full disk or a sample that went bad after the launch check (a file truncated since)
    is one line and exit 2, not a traceback from a DataLoader worker."""
    from llava.train.disk_full import DiskFullError
    from llava.utils.user_errors import fail

    try:
        trainer.train(resume_from_checkpoint=resume)
    except DiskFullError as err:
        fail(str(err))
    except Exception:
        bad = dataset.fetch_failure() if hasattr(dataset, "fetch_failure") else None
        if bad is None:
            raise
        fail(str(bad), here=True)


def final_evaluation(trainer: Any) -> None:
    """Evaluate once more at the end when the last step was not an eval step (the curve ends at the end)."""
    if trainer.eval_dataset is None:
        return
    step = trainer.state.global_step
    if any(entry.get("step") == step and "eval_loss" in entry for entry in trainer.state.log_history):
        return
    trainer.evaluate()


def packed_attention_choice(attn_implementation: str | None) -> str:
    """The attention a packed run uses: sdpa becomes its once-per-sample form; one line + exit 2 if unusable."""
    from llava.model.packing import PACKED_SDPA, check_packing_implementation
    from llava.utils.user_errors import fail

    attn = attn_implementation or "sdpa"
    try:
        check_packing_implementation(attn)
    except ValueError as err:
        fail(str(err))
    if attn == "sdpa":
        attn = PACKED_SDPA
        logger.info("packing: attention is sdpa once per sample (%s); no L x L mask", PACKED_SDPA)
    return attn


def check_resume_checkpoint(resume: str | None, trust: bool) -> None:
    """Refuse (one line, exit 2) a resume checkpoint that fails :mod:`llava.train.checkpoint_trust`.

    Rank 0 verifies (hashing a large checkpoint once, not once per rank) and tells the others.
    """
    if resume is None:
        return
    from llava.train.checkpoint_trust import UntrustedCheckpointError, verify_checkpoint
    from llava.utils.user_errors import fail

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    verdict: list[str | None] = [None]
    if not distributed or torch.distributed.get_rank() == 0:
        try:
            verify_checkpoint(resume, trust=trust)
        except UntrustedCheckpointError as err:
            verdict[0] = f"not resuming: {err}"
    if distributed:
        torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        fail(verdict[0])


def take_output_lock(output_dir: str) -> Path | None:
    """Rank 0 takes ``output_dir``'s lock (:mod:`llava.utils.run_lock`); one line + exit 2 on every rank if held."""
    from llava.train.usage import fail
    from llava.utils.run_lock import OutputDirLockedError, acquire_lock

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    lock: Path | None = None
    verdict: list[str | None] = [None]
    if not distributed or torch.distributed.get_rank() == 0:
        try:
            lock = acquire_lock(output_dir)
        except OutputDirLockedError as err:
            verdict[0] = str(err)
    if distributed:
        torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        fail(verdict[0])
    return lock


def _shutdown_distributed() -> None:
    """Wait for every rank to finish saving, then tear the process group down cleanly."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def hard_exit_after_cpu_deepspeed(code: int = 0) -> None:
    """End the process at once after a multi-process CPU DeepSpeed run (``DS_ACCELERATOR=cpu``).

    DeepSpeed's CPU communication backend leaves native threads behind; at interpreter shutdown
    they intermittently abort the process ("terminate called without an active exception") after
    everything was saved, which turns a finished run into a failed exit code. Everything is
    flushed first; GPU runs are not affected.
    """
    if os.environ.get("DS_ACCELERATOR") != "cpu" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    train()
    hard_exit_after_cpu_deepspeed()
