"""Validation during training (``--eval_data_path``) and answer-token accuracy, as a Trainer mixin.

Answer-token accuracy is the share of supervised tokens (labels != -100, i.e. the answer turns) whose
next-token prediction (argmax of the logits one position earlier) is exactly the label. The labels are
the model's own (``return_labels=True``: images spliced in, packing boundaries masked), so the tokens
counted are exactly the tokens the loss is taken over.

* Training: every logging step adds ``accuracy`` over the micro-batches since the previous log, summed
  across ranks (counted as a token sum, like the loss normaliser).
* Validation: ``prediction_step`` returns per-sample sums ``[loss sum, supervised tokens, correct
  tokens, image micro-batch flag, one value per auxiliary term]`` in place of logits, so the Trainer's
  own evaluation loop gathers them across ranks and drops the duplicates it adds to even out the last
  batch; :meth:`ValidationMixin.validation_metrics` turns them into ``eval_loss`` (token cross-entropy,
  summed over every supervised token of the set / their number, the training loss's masking and
  normalisation), ``eval_accuracy``, ``eval_tokens``, ``eval_samples`` and, per auxiliary term,
  ``eval_loss_<name>`` / ``eval_loss_<name>_weighted`` (mean over samples in batches with real images).
  They reach ``trainer_state.json`` and ``--report_to`` like every Trainer metric.

Validation batches are never packed (the packed collator collates them unpacked), so ``eval_loss`` is
comparable between packed and padded runs. A bad validation sample with ``--skip_bad_samples`` is left
out (an empty row), never replaced by another sample, so no sample is counted twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX

N_FIXED = 4  # per-sample columns before the auxiliary terms: loss sum, tokens, correct, image batch


def token_stats(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, 3) float64 per sample: summed next-token cross-entropy, supervised tokens, exactly predicted ones."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    mask = shift_labels != IGNORE_INDEX
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    correct = (shift_logits.argmax(dim=-1) == shift_labels) & mask
    return torch.stack([ce.sum(dim=1).double(), mask.sum(dim=1).double(), correct.sum(dim=1).double()], dim=1)


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, supervised) token counts of a batch, as 0-d tensors (no host sync)."""
    shift_labels = labels[:, 1:].to(logits.device)
    mask = shift_labels != IGNORE_INDEX
    correct = (logits[:, :-1].argmax(dim=-1) == shift_labels) & mask
    return correct.sum(), mask.sum()


def returns_llava_labels(model: Any) -> bool:
    """True for a LLaVA causal LM (possibly PEFT-wrapped): its forward takes ``return_labels``."""
    from llava.model.language_model.llava_causal_lm import LlavaCausalLMMixin

    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    return isinstance(base, LlavaCausalLMMixin)


class ValidationMixin:
    """Put in front of the other loss mixins in the Trainer's bases (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("eval_dataset") is not None and kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = self.validation_metrics
        super().__init__(*args, **kwargs)

    def _llava_labels(self) -> bool:
        flag = getattr(self, "_returns_llava_labels", None)
        if flag is None:
            flag = self._returns_llava_labels = returns_llava_labels(self.accelerator.unwrap_model(self.model))
        return flag

    # ---- training accuracy ----

    def _accuracy_buffer(self) -> torch.Tensor:
        buf = getattr(self, "_accuracy_sums", None)
        if buf is None:
            buf = self._accuracy_sums = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        return buf

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        counting = model.training and "labels" in inputs
        if counting and self._llava_labels():
            inputs = {**inputs, "return_labels": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if counting and logits is not None:
            labels = outputs.get("llava_labels")
            with torch.no_grad():
                correct, total = accuracy_counts(logits.detach(), inputs["labels"] if labels is None else labels)
            buf = self._accuracy_buffer()
            buf[0] += correct.to(buf)
            buf[1] += total.to(buf)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and getattr(self, "_accuracy_sums", None) is not None:
            buf = self._accuracy_sums
            total = self.accelerator.reduce(buf.clone(), reduction="sum") if self.accelerator.num_processes > 1 \
                else buf.clone()
            if float(total[1]) > 0:
                logs["accuracy"] = round(float(total[0]) / float(total[1]), 6)
            buf.zero_()
        super().log(logs, start_time)

    # ---- validation ----

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[None, torch.Tensor, torch.Tensor]:
        """Per-sample validation sums in place of logits (gathered by the Trainer; see the module docstring)."""
        inputs = self._prepare_inputs(inputs)
        llava = self._llava_labels()
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs, return_labels=True) if llava else model(**inputs)
        labels = outputs.get("llava_labels") if llava else None
        stats = token_stats(outputs["logits"], inputs["labels"] if labels is None else labels)
        names = self._aux_names()
        aux = outputs.get("aux_losses") or {}
        from_images = bool(aux) and bool(outputs.get("aux_from_images", True))
        extra = torch.zeros((stats.shape[0], 1 + len(names)), dtype=stats.dtype, device=stats.device)
        if from_images:
            extra[:, 0] = 1.0
            for j, name in enumerate(names):
                if name in aux:
                    extra[:, 1 + j] = float(aux[name])
        stats = torch.cat([stats, extra], dim=1)
        return None, stats, stats[:, :1]

    def validation_metrics(self, prediction: Any) -> dict[str, float]:
        """``loss``, ``accuracy``, ``tokens``, ``samples`` and the auxiliary terms from the gathered sums
        (the Trainer prefixes them with ``eval_``)."""
        rows = prediction.predictions
        rows = np.concatenate(rows) if isinstance(rows, (list, tuple)) else np.asarray(rows)
        rows = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        tokens = float(rows[:, 1].sum())
        metrics: dict[str, float] = {"tokens": tokens, "samples": float((rows[:, 1] > 0).sum())}
        if tokens:
            metrics["loss"] = round(float(rows[:, 0].sum()) / tokens, 6)
            metrics["accuracy"] = round(float(rows[:, 2].sum()) / tokens, 6)
        names = self._aux_names()
        image_rows = rows[rows[:, 3] > 0] if rows.shape[1] > N_FIXED else rows[:0]
        if names and len(image_rows):
            weights = self._pipeline().aux_weights()
            for j, name in enumerate(names):
                value = float(image_rows[:, N_FIXED + j].mean())
                metrics[f"loss_{name}"] = round(value, 6)
                metrics[f"loss_{name}_weighted"] = round(float(weights[name]) * value, 6)
        return metrics
