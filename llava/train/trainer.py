"""``LLaVATrainer``: the HF Trainer with LLaVA's sampler, optimizer groups and checkpoint layout.

What differs from ``transformers.Trainer`` (only public/overridable Trainer methods are touched):

* ``group_by_modality_length`` -> :class:`llava.data.sampler.LengthGroupedSampler` over the
  dataset's ``modality_lengths`` (image and text-only samples batched separately).
* ``mm_projector_lr`` -> the projector and the add-on modules that travel with it (by object
  identity, from the add-on registry) get their own parameter groups (decay / no decay) at that
  learning rate; everything else keeps ``learning_rate``. Every logging step adds the rate the last
  optimizer step applied to the projector groups as ``learning_rate_projector`` (like ``learning_rate``).
* Projector-only training (``tune_mm_mlp_adapter``): model files in ``checkpoint-N`` and in the
  final folder are ``mm_projector.bin`` (upstream keys, gathered ZeRO-3-safely) + ``config.json``;
  optimizer, scheduler, RNG and trainer state are still saved, so resuming works.
* LoRA: every save (checkpoints included) also writes ``non_lora_trainables.bin`` and
  ``config.json``; resuming loads them back, so the projector survives a resume.
* ``--eval_data_path``: validation loss, auxiliary terms and answer-token accuracy at each eval step,
  training accuracy at each logging step (:mod:`llava.train.validation`).
* Before any ``save_pretrained`` the model's ``generation_config`` is made self-consistent
  (:func:`llava.utils.generation_config.sanitize_generation_config`) and the changes are logged.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from llava.model.checkpoints import MM_PROJECTOR_FILE, NON_LORA_FILE, projector_tensors
from llava.train.aux_loss_logging import AuxLossLoggingMixin
from llava.train.data_fingerprint import write_fingerprint
from llava.train.skips import SKIPPED_FILE
from llava.train.throughput import ThroughputMixin
from llava.train.validation import ValidationMixin
from llava.utils.atomic import atomic_path, atomic_torch_save, atomic_write_json
from llava.utils.generation_config import sanitize_generation_config
from llava.utils.zero import gather_named, get_peft_state_non_lora_maybe_zero_3

logger = logging.getLogger(__name__)
GROUP_KEY = "llava_group"  # optimizer param-group tag: its learning rate is logged as learning_rate_<tag>


class AppliedGroupRates(TrainerCallback):
    """Each tagged optimizer group's rate as the optimizer step used it (read before the scheduler moves it on,
    where the Trainer reads its own ``learning_rate``)."""

    def __init__(self) -> None:
        self.rates: dict[str, float] = {}

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        for group in getattr(optimizer, "param_groups", ()):
            if group.get(GROUP_KEY):
                self.rates[group[GROUP_KEY]] = float(group["lr"])


def embeddings_resized(peft_model: Any) -> bool:
    """True when the LoRA model's vocabulary differs from its base model's config (PEFT then saves the
    embeddings); a base without a local ``config.json`` counts as not resized (nothing is fetched)."""
    base = getattr(peft_model.peft_config.get(peft_model.active_adapter), "base_model_name_or_path", None)
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        return False
    return AutoConfig.from_pretrained(base).vocab_size != peft_model.config.vocab_size


def atomic_save_config(config: Any, output_dir: str) -> None:
    """Write ``config.json`` for a ``PretrainedConfig`` atomically into ``output_dir``."""
    with atomic_path(os.path.join(output_dir, "config.json")) as tmp:
        config.to_json_file(tmp, use_diff=True)


def projector_param_ids(model: nn.Module) -> set[int]:
    """Object ids of the parameters that travel with the projector (empty for a model without one)."""
    get_model = getattr(model, "get_model", None)
    base = get_model() if get_model is not None else None
    if base is None or getattr(base, "mm_projector", None) is None:
        return set()
    return {id(p) for m in base.projector_modules() for p in m.parameters()}


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    decay_names: Iterable[str],
    weight_decay: float,
    mm_projector_lr: float | None,
    projector_ids: set[int] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups: (decay, no-decay) x (rest, projector); projector groups get ``mm_projector_lr``.

    ``projector_ids``: object ids of the projector-side parameters (:func:`projector_param_ids`).
    Frozen parameters are left out and empty groups dropped (DeepSpeed dislikes empty groups).
    """
    projector_ids = projector_ids or set()
    decay = set(decay_names)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (d, p): [] for d in (True, False) for p in (False, True)
    }
    for name, param in named_params:
        if not param.requires_grad:
            continue
        is_proj = mm_projector_lr is not None and id(param) in projector_ids
        buckets[(name in decay, is_proj)].append(param)
    groups = []
    for (is_decay, is_proj), params in buckets.items():
        if not params:
            continue
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if is_decay else 0.0}
        if is_proj:
            group["lr"] = mm_projector_lr
            group[GROUP_KEY] = "projector"
        groups.append(group)
    return groups


class LLaVATrainer(ValidationMixin, ThroughputMixin, AuxLossLoggingMixin, Trainer):
    """Trainer with LLaVA's modality-grouped sampler, projector lr and projector/LoRA checkpoints."""

    data_fingerprint: dict[str, Any] | None = None  # train() sets it: saved in every checkpoint (data_fingerprint)

    # ---- data ----

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None or not getattr(self.args, "group_by_modality_length", False):
            return super()._get_train_sampler(train_dataset)
        from llava.data.sampler import LengthGroupedSampler

        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=dataset.modality_lengths,
            group_by_modality=True,
        )

    # ---- logging ----

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Every tagged parameter group's learning rate next to the Trainer's ``learning_rate`` (first group)."""
        applied = next((c.rates for c in self.callback_handler.callbacks if isinstance(c, AppliedGroupRates)), {})
        if "learning_rate" in logs:
            for tag, rate in applied.items():
                logs.setdefault(f"learning_rate_{tag}", rate)
        super().log(logs, start_time)

    # ---- optimizer ----

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        mm_projector_lr = getattr(self.args, "mm_projector_lr", None)
        if mm_projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = build_param_groups(
            opt_model.named_parameters(), self.get_decay_parameter_names(opt_model),
            self.args.weight_decay, mm_projector_lr, projector_param_ids(opt_model),
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        if not any(isinstance(c, AppliedGroupRates) for c in self.callback_handler.callbacks):
            self.add_callback(AppliedGroupRates())
        return self.optimizer

    # ---- saving ----

    def _unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _model_config(self) -> Any:
        return getattr(self._unwrapped(), "config", None)

    def is_projector_only(self) -> bool:
        """True when only the projector is trained (``--tune_mm_mlp_adapter True``)."""
        config = self._model_config()
        return bool(getattr(config, "tune_mm_mlp_adapter", False))

    def is_lora(self) -> bool:
        """True when the model is a PEFT LoRA model (``--lora_enable True``)."""
        return bool(getattr(self.args, "lora_enable", False))

    def sanitize_generation_config(self) -> list[str]:
        """Fix an inconsistent ``generation_config`` before saving, logging each change once."""
        changes = sanitize_generation_config(getattr(self._unwrapped(), "generation_config", None))
        if changes and self.args.should_save:
            logger.warning("generation_config was inconsistent and would fail to save; fixed:\n  %s",
                           "\n  ".join(changes))
        return changes

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save in LLaVA's layout; must run on every rank (ZeRO-3 gathers are collective)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.sanitize_generation_config()
        if self.is_projector_only():
            self._save_projector(output_dir)
        else:
            super().save_model(output_dir, _internal_call=_internal_call)
            if self.is_lora():
                self._save_non_lora(output_dir)
        if _internal_call:
            from llava.train.save_hook import stop_if_asked

            stop_if_asked("model", self.state.global_step)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """LoRA: PEFT's ``save_pretrained`` with ``save_embedding_layers`` decided here (were the embeddings resized
        against the base model's config?) rather than by PEFT's "auto", which reloads the base config through
        ``LlavaLlamaConfig`` and warns that a ``llama`` config instantiates ``llava_llama``. Otherwise the Trainer's."""
        if not self.is_lora():
            super()._save(output_dir, state_dict=state_dict)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self._unwrapped()
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save,
                              save_embedding_layers=embeddings_resized(model))
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_projector(self, output_dir: str) -> None:
        model = self._unwrapped()
        if getattr(model.get_model(), "mm_projector", None) is None:
            raise RuntimeError("--tune_mm_mlp_adapter is set but the model has no projector; was --vision_tower given?")
        # buffers too: e.g. the cosine regularizer's fixed embedding travels with the projector
        with_embeddings = bool(getattr(model.config, "mm_use_im_start_end", False))
        state = gather_named(projector_tensors(model, with_embeddings=with_embeddings))
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        atomic_torch_save(state, os.path.join(output_dir, MM_PROJECTOR_FILE))
        atomic_save_config(model.config, output_dir)
        logger.info("saved %d projector tensors to %s/%s", len(state), output_dir, MM_PROJECTOR_FILE)

    def _save_non_lora(self, output_dir: str) -> None:
        model = self._unwrapped()
        state = get_peft_state_non_lora_maybe_zero_3(model.named_parameters())
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        atomic_torch_save(state, os.path.join(output_dir, NON_LORA_FILE))
        atomic_save_config(model.config, output_dir)
        logger.info("saved %d non-LoRA trainable tensors to %s/%s", len(state), output_dir, NON_LORA_FILE)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        from llava.train.save_hook import stop_if_asked

        stop_if_asked("optimizer", self.state.global_step)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """HF's checkpoint, the manifest on rank 0 once every rank is done, and only then the rotation.

        HF rotates inside its ``_save_checkpoint``, before our manifest exists: a kill there left only an
        unfinished checkpoint. So HF's rotation is held off (``save_total_limit`` is None for the call) and
        :func:`llava.train.checkpoint_check.rotate_checkpoints` runs after the manifest is on disk. An
        unfinished folder of the same step (a killed save, resumed from an earlier one) is removed first.
        """
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from llava.train.checkpoint_check import MANIFEST, rotate_checkpoints
        from llava.train.checkpoint_trust import mark_converter_scripts, write_manifest
        from llava.train.disk_full import check_disk_full
        from llava.train.save_hook import stop_if_asked

        step = self.state.global_step
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if self.args.should_save and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, MANIFEST)):
            shutil.rmtree(folder)  # a save of this step that was killed before it finished
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as err:
            check_disk_full(err, folder, run_dir)  # DiskFullError (one line) when the disk is full
            raise
        finally:
            self.args.save_total_limit = limit
        stop_if_asked("trainer_state", step)
        dataset = self.train_dataset
        if hasattr(dataset, "sync_across_ranks"):
            dataset.sync_across_ranks()  # collective: every rank's skipped samples, counted once
        self.accelerator.wait_for_everyone()  # other ranks' ZeRO shards are written
        if self.args.should_save and os.path.isdir(folder):
            try:
                if hasattr(dataset, "status_record"):
                    atomic_write_json(os.path.join(folder, SKIPPED_FILE), dataset.status_record())
                write_fingerprint(folder, self.data_fingerprint)
                mark_converter_scripts(folder)
                write_manifest(folder, step=step)
            except OSError as err:
                check_disk_full(err, folder, run_dir)
                raise
            rotate_checkpoints(run_dir, limit, newest=folder, best=self.state.best_model_checkpoint, step=step)
        self.accelerator.wait_for_everyone()

    # ---- resuming (non-DeepSpeed path; DeepSpeed restores from its own global_step* folder) ----

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = self.model if model is None else model
        projector_file = os.path.join(resume_from_checkpoint, MM_PROJECTOR_FILE)
        has_full_weights = any(
            os.path.isfile(os.path.join(resume_from_checkpoint, name))
            for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                         "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
        )
        if os.path.isfile(projector_file) and not has_full_weights:
            self._load_partial(target, projector_file)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        non_lora_file = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
        if os.path.isfile(non_lora_file):
            self._load_partial(target, non_lora_file)

    @staticmethod
    def _load_partial(model: nn.Module, path: str) -> None:
        """Load a partial state dict (projector / non-LoRA trainables); every key must land."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(
                f"{path} has keys the model does not: {result.unexpected_keys[:5]} ...; "
                "was the checkpoint written by a different model/flag setup?"
            )
        logger.info("resume: restored %d tensors from %s", len(state), path)
