"""Trainer mixin for the cosine regularizers: correct weighting of lambda * L_cos, and its logging.

The model returns ``loss = L_TP + lambda * L_cos`` plus ``loss_tp``, ``loss_cos`` and
``loss_cos_weighted``. The HF Trainer rescales a token-normalized loss for multi-process token
averaging and skips its division by gradient-accumulation steps; both are right for L_TP (a
token sum) but not for L_cos (a per-batch mean), so :meth:`compute_loss` re-weights that term to
``lambda * L_cos / GA`` per micro-batch (averaged over ranks by the optimizer's gradient
all-reduce). Every logging step adds ``loss_tp``, ``loss_cos``, ``loss_cos_weighted`` and
``mm_cosine_lambda`` (means over the micro-batches since the last log, across all ranks), so they
reach ``trainer_state.json`` and whatever ``--report_to`` names.
"""

from __future__ import annotations

from typing import Any

import torch

AUX_KEYS = ("loss_tp", "loss_cos", "loss_cos_weighted")


class AuxLossLoggingMixin:
    """Put in front of ``transformers.Trainer`` in the bases."""

    def _aux_enabled(self) -> bool:
        cfg = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        return getattr(cfg, "mm_cosine_loss", "none") not in (None, "none")

    def _aux_buffer(self) -> torch.Tensor:
        buf = getattr(self, "_aux_sums", None)
        if buf is None:
            # [L_TP contributions, optimizer-step fractions, L_cos sum, lambda*L_cos sum, image micro-batches]
            buf = torch.zeros(5, dtype=torch.float64, device=self.args.device)
            self._aux_sums = buf
        return buf

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if not (model.training and self._aux_enabled() and isinstance(outputs, dict)):
            return (loss, outputs) if return_outputs else loss
        scaled_for_ga = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_for_ga is None:
            scaled_for_ga = bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None)
        token_scale = 1.0
        if scaled_for_ga and self.args.average_tokens_across_devices:
            token_scale = float(self.accelerator.num_processes // self.get_tp_size())
        ga = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        buf = self._aux_buffer()
        tp = outputs["loss_tp"] if "loss_tp" in outputs else outputs["loss"].detach()
        # L_TP as the Trainer reports it: token-normalised losses are summed over micro-batches and
        # scaled by the process count; per-batch means are averaged over the accumulation steps.
        buf[0] += tp.double() * token_scale if scaled_for_ga else tp.double() / ga
        buf[1] += 1.0 / ga
        if "loss_cos_weighted" in outputs:
            weighted = outputs["loss_cos_weighted"]
            if scaled_for_ga:
                loss = loss - weighted * token_scale + weighted / ga
            if outputs.get("loss_cos_from_images", True):
                buf[2] += outputs["loss_cos"].double()
                buf[3] += weighted.detach().double()
                buf[4] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._aux_enabled():
            buf = self._aux_buffer()
            total = self.accelerator.reduce(buf.clone(), reduction="sum") if self.accelerator.num_processes > 1 \
                else buf.clone()
            steps, n_cos = float(total[1]), float(total[4])
            if steps:
                logs["loss_tp"] = round(float(total[0]) / steps, 6)
            if n_cos:
                logs["loss_cos"] = round(float(total[2]) / n_cos, 6)
                logs["loss_cos_weighted"] = round(float(total[3]) / n_cos, 6)
            cfg = self.accelerator.unwrap_model(self.model).config
            logs["mm_cosine_lambda"] = float(getattr(cfg, "mm_cosine_lambda", 0.0))
            buf.zero_()
        super().log(logs, start_time)
