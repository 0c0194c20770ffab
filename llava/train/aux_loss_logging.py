"""Trainer mixin: the one place that forms L = L_TP + sum_i lambda_i * L_i, and logs every term.

The model returns ``loss`` = L_TP (token loss) and ``aux_losses`` = {name: L_i} (per-batch means,
from the add-ons that declare an auxiliary loss; lambda_i comes from the add-on registry). The
HF Trainer rescales a token-normalized loss for multi-process token averaging and skips its
division by gradient-accumulation steps; both are right for L_TP (a token sum) but not for a
per-batch mean, so each micro-batch adds ``lambda_i * L_i / GA`` in that case and
``lambda_i * L_i`` otherwise (the Trainer then divides the whole loss by GA): lambda means the
same at any accumulation, and the optimizer's gradient all-reduce averages over ranks.

Every logging step adds ``loss_tp``, ``loss_<name>``, ``loss_<name>_weighted`` (means over the
micro-batches with real images since the last log, summed across ranks) and each weight under its
config key (e.g. ``mm_cosine_lambda``), so they reach ``trainer_state.json`` and ``--report_to``.
"""

from __future__ import annotations

from typing import Any

import torch


def addon_pipeline_of(model: Any) -> Any:
    """The add-on pipeline of a (possibly wrapped) LLaVA model, or None for a plain LLM."""
    get_model = getattr(model, "get_model", None)
    base = get_model() if get_model is not None else None
    return base.addon_pipeline() if base is not None and hasattr(base, "addon_pipeline") else None


class AuxLossLoggingMixin:
    """Put in front of ``transformers.Trainer`` in the bases."""

    def _pipeline(self) -> Any:
        return addon_pipeline_of(self.accelerator.unwrap_model(self.model))

    def _aux_names(self) -> list[str]:
        pipe = self._pipeline()
        return list(pipe.aux_weights()) if pipe is not None else []

    def _aux_buffer(self, n_aux: int) -> torch.Tensor:
        buf = getattr(self, "_aux_sums", None)
        if buf is None:
            # [L_TP contributions, optimizer-step fractions, image micro-batches, then per term: L_i, lambda_i*L_i]
            buf = torch.zeros(3 + 2 * n_aux, dtype=torch.float64, device=self.args.device)
            self._aux_sums = buf
        return buf

    def _scaling(self, num_items_in_batch: Any) -> tuple[bool, int]:
        """(loss already scaled for GA and token averaging by the Trainer?, GA steps)."""
        scaled_for_ga = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_for_ga is None:
            scaled_for_ga = bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None)
        ga = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return scaled_for_ga, ga

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        aux = outputs.get("aux_losses") if isinstance(outputs, dict) else None
        if not aux:
            return (loss, outputs) if return_outputs else loss
        weights = self._pipeline().aux_weights()
        scaled_for_ga, ga = self._scaling(num_items_in_batch)
        weighted = {k: weights[k] * v for k, v in aux.items()}
        # L_TP as the Trainer reports it: ``loss`` here is already token-normalised over the GA window
        # and scaled by the process count (summed over micro-batches), or a per-batch mean (averaged).
        tp = loss.detach().double()
        loss = loss + sum(weighted.values()) / (ga if scaled_for_ga else 1)
        if model.training:
            names = list(weights)
            buf = self._aux_buffer(len(names))
            buf[0] += tp if scaled_for_ga else tp / ga
            buf[1] += 1.0 / ga
            if outputs.get("aux_from_images", True):
                buf[2] += 1
                for i, name in enumerate(names):
                    if name in aux:
                        buf[3 + 2 * i] += aux[name].detach().double()
                        buf[4 + 2 * i] += weighted[name].detach().double()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        names = self._aux_names() if "loss" in logs else []
        if names:
            buf = self._aux_buffer(len(names))
            total = self.accelerator.reduce(buf.clone(), reduction="sum") if self.accelerator.num_processes > 1 \
                else buf.clone()
            steps, n_img = float(total[1]), float(total[2])
            if steps:
                logs["loss_tp"] = round(float(total[0]) / steps, 6)
            if n_img:
                for i, name in enumerate(names):
                    logs[f"loss_{name}"] = round(float(total[3 + 2 * i]) / n_img, 6)
                    logs[f"loss_{name}_weighted"] = round(float(total[4 + 2 * i]) / n_img, 6)
            pipe = self._pipeline()
            weights, keys = pipe.aux_weights(), pipe.aux_weight_keys()
            for name in names:
                logs[keys.get(name, f"lambda_{name}")] = float(weights[name])
            buf.zero_()
        super().log(logs, start_time)
