"""Throughput you can see in every run (packed or not): real tokens/s, samples/s, padding, image share, MFU.

:class:`ThroughputMixin` goes in front of ``transformers.Trainer`` in the bases. Each training
micro-batch is counted on the device, without a host sync (:func:`batch_counts`): every
``<image>`` placeholder counts as the ``T`` positions it becomes in the LLM sequence (``T`` = tokens
per image after the add-ons), each row is cut to ``config.tokenizer_model_max_length`` as the model
cuts it, and a row takes as many positions as the longest row of its micro-batch (padding). The
counts are summed over processes when logging, so every rate is the whole job's.

Fields of every logging step (the wall clock since the previous log; the first one since
``train()`` began; evaluation, checkpoint saves and data loading in between are included):

* ``tokens_per_second``: real (non-padding) LLM tokens per second, image tokens included;
* ``samples_per_second``: samples per second (under ``--packing`` every sample of a pack counts,
  whereas the Trainer's own ``train_samples_per_second`` counts packs);
* ``padding_fraction``: 1 - real tokens / processed positions (rows x longest row per micro-batch);
* ``image_token_share``: image tokens / real tokens (truncation inside an image block is counted);
* ``mfu``: the LLM's model FLOPs utilization, its training FLOPs over (seconds x peak FLOP/s x
  processes). FLOPs per component, forward and backward, come from :mod:`llava.train.flops`: 2 per
  matmul weight and token forward, 2 more for each weight whose input needs a gradient and 2 for each
  weight that trains (LLM: about ``4 N + 2 N_trainable`` per real token, ``lm_head`` and LoRA
  included, the embedding lookup not), plus attention ``4 layers width s^2`` forward and twice that
  backward per sample of ``s`` tokens (a packed segment or an unpadded row). Padding positions are
  not useful work and do not count; recompute (gradient checkpointing) does not count either (MFU,
  not HFU);
* ``mfu_vision``: the same for the vision side, which ``mfu`` leaves out: the tower (forward only
  unless it trains) and the projector with its add-on modules (weight gradients of what trains, input
  gradients of the Linears after the first trainable one). A text-only training batch still runs one
  blank image through the tower (so every rank builds the same graph); that image counts here but
  adds no image tokens. :func:`component_mfu` splits it into tower and projector.

MFU needs the device's peak dense bf16 FLOP/s: ``--peak_tflops``, else :data:`PEAK_DENSE_FLOPS` by
the CUDA device name. On a CPU, or an unknown GPU, no MFU is logged (said once at info level)
unless ``--peak_tflops`` is given; it is then computed against that number on any device, CPU
included, because the user asked for it.

At the end of training the Trainer's last log (the one with ``train_runtime``) gets the whole run:
``throughput_tokens_per_second``, ``throughput_samples_per_second``, ``throughput_padding_fraction``,
``throughput_image_token_share``, ``throughput_mfu``, ``throughput_mfu_vision`` (when MFU is known),
``throughput_real_tokens``, ``throughput_samples``, ``throughput_seconds`` (since ``train()`` began);
the main process also prints them as one ``[throughput]`` line. All of it goes through
``Trainer.log``: ``trainer_state.json`` (``log_history``) and every ``--report_to`` integration.

The FLOP formulas (:class:`ModelShape`, :func:`model_shape`, :func:`component_mfu`) are shared with
``scripts/bench/gpu_throughput.py``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.train.flops import ModelShape, component_mfu, model_shape

__all__ = ["COUNT_FIELDS", "ModelShape", "ThroughputMixin", "batch_counts", "component_mfu", "model_shape",
           "peak_flops_for", "resolve_peak_flops", "summary_line", "throughput_fields"]

logger = logging.getLogger(__name__)

PEAK_DENSE_FLOPS: tuple[tuple[str, float], ...] = (
    # (GPU model as it appears in torch.cuda.get_device_name, dense bf16 tensor FLOP/s); first match wins
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
)
COUNT_FIELDS = ("real_tokens", "processed_positions", "image_tokens", "samples", "sum_sq_lengths", "vision_images")
"""Order of the entries of :func:`batch_counts`."""


def peak_flops_for(device_name: str) -> float | None:
    """Peak dense FLOP/s of a GPU from :data:`PEAK_DENSE_FLOPS` (whole-word model match), or None."""
    for model, flops in PEAK_DENSE_FLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(model)}(?![A-Za-z0-9])", device_name):
            return flops
    return None


def resolve_peak_flops(device: torch.device, peak_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s per device or None, where it came from / why there is none)."""
    if peak_tflops is not None:
        if not peak_tflops > 0:
            raise ValueError(f"--peak_tflops must be positive, got {peak_tflops}.")
        return float(peak_tflops) * 1e12, "--peak_tflops"
    if device.type != "cuda":
        return None, f"no MFU on {device.type} (no peak FLOP/s known for it; --peak_tflops sets one)"
    name = torch.cuda.get_device_name(device)
    peak = peak_flops_for(name)
    if peak is None:
        return None, f"no MFU: {name!r} is not in the peak FLOP/s table; pass --peak_tflops"
    return peak, name


# ---- token counting ----

def batch_counts(inputs: dict[str, Any], tokens_per_image: int = 1, max_length: int | None = None,
                 blank_image: bool = False) -> torch.Tensor:
    """Float64 tensor, on the batch's device, of :data:`COUNT_FIELDS` for one micro-batch.

    ``inputs``: ``input_ids`` (B, L) with ``IMAGE_TOKEN_INDEX`` placeholders, ``attention_mask``,
    optional ``packed_seq_ids`` (0 on padding, k on the k-th sample of a row) and ``images``. Each
    placeholder takes ``tokens_per_image`` positions; rows are cut at ``max_length`` (packed rows are not:
    the limit is per sample there, and the packer keeps to it). Samples: the
    nonempty segments (packed) or rows (padded). ``blank_image``: the model runs one blank image
    through the tower for a batch without images (counted in ``vision_images`` only).
    """
    ids = inputs["input_ids"]
    bsz, length = ids.shape
    mask = inputs.get("attention_mask")
    valid = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    is_img = (ids == IMAGE_TOKEN_INDEX) & valid
    width = torch.where(is_img, tokens_per_image, valid.long())
    ends = width.cumsum(dim=1)
    segments = inputs.get("packed_seq_ids")
    if max_length is not None and segments is None:  # positions each token keeps after the model's row cut
        width = ends.clamp(max=max_length) - (ends - width).clamp(max=max_length)
    row_len = width.sum(dim=1)
    segments = (segments if segments is not None else valid.long()).masked_fill(~valid, 0)
    key = (torch.arange(bsz, device=ids.device).unsqueeze(1) * (length + 1) + segments).reshape(-1)
    seg_len = torch.zeros(bsz * (length + 1), dtype=torch.long, device=ids.device)
    seg_len = seg_len.scatter_add_(0, key, width.reshape(-1)).view(bsz, length + 1)[:, 1:].double()
    images = inputs.get("images")
    n_images = 0 if images is None else len(images)
    zero = row_len.new_zeros(()).double()
    return torch.stack([
        row_len.sum().double(),
        (row_len.max() * bsz).double() if bsz else zero,
        (width * is_img).sum().double(),
        (seg_len > 0).sum().double(),
        (seg_len ** 2).sum(),
        zero + (n_images if n_images or not blank_image else 1),
    ])


def throughput_fields(counts: Sequence[float], seconds: float, shape: ModelShape | None = None,
                      peak_flops: float | None = None, devices: int = 1, prefix: str = "") -> dict[str, float]:
    """The logged fields (see the module docstring) for summed :data:`COUNT_FIELDS` over ``seconds``."""
    real, processed, image_tokens, samples, sum_sq, vision_images = (float(c) for c in counts)
    if real <= 0 or seconds <= 0:
        return {}
    out = {
        f"{prefix}tokens_per_second": round(real / seconds, 3),
        f"{prefix}samples_per_second": round(samples / seconds, 4),
        f"{prefix}padding_fraction": round(1.0 - real / processed, 6) if processed > 0 else 0.0,
        f"{prefix}image_token_share": round(image_tokens / real, 6),
    }
    if peak_flops and shape is not None:
        budget = seconds * peak_flops * max(1, devices)
        out[f"{prefix}mfu"] = round(shape.llm_flops(real, sum_sq) / budget, 6)
        if shape.has_tower:
            out[f"{prefix}mfu_vision"] = round(shape.vision_flops(vision_images) / budget, 6)
    return out


def summary_line(fields: dict[str, float], prefix: str = "throughput_") -> str:
    """One human line for the end-of-training fields."""
    f = {k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)}
    line = (f"[throughput] {f['tokens_per_second']:.1f} real tokens/s, {f['samples_per_second']:.2f} samples/s, "
            f"padding {100 * f['padding_fraction']:.1f}%, image tokens {100 * f['image_token_share']:.1f}%")
    if "mfu" in f:
        line += f", MFU {100 * f['mfu']:.1f}% (LLM)"
        if "mfu_vision" in f:
            line += f" + {100 * f['mfu_vision']:.1f}% (vision tower + projector, counted apart)"
    return line + f" over {f['seconds']:.1f} s"


# ---- trainer mixin ----

@dataclass
class _Meter:
    """One ``train()`` call's throughput bookkeeping."""

    peak_flops: float | None
    start: float
    last: float
    shape: ModelShape | None = None
    pending: torch.Tensor | None = None
    """This process's counts since the last log."""
    totals: tuple[float, ...] = (0.0,) * len(COUNT_FIELDS)
    """The whole run's counts, summed over processes, up to the last log."""


class ThroughputMixin:
    """Put in front of ``transformers.Trainer`` in the bases (see the module docstring)."""

    def _throughput_meter(self) -> _Meter:
        meter = getattr(self, "_meter", None)
        if meter is None:
            meter = self._start_meter()
        return meter

    def _start_meter(self) -> _Meter:
        peak, source = resolve_peak_flops(self.args.device, getattr(self.args, "peak_tflops", None))
        if peak is None:
            logger.info("throughput: %s", source)
        now = time.perf_counter()
        self._meter = _Meter(peak_flops=peak, start=now, last=now)
        return self._meter

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._start_meter()
        return super().train(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if model.training and "input_ids" in inputs:
            meter = self._throughput_meter()
            if meter.shape is None:
                meter.shape = model_shape(self.accelerator.unwrap_model(self.model))
            shape = meter.shape
            counts = batch_counts(inputs, shape.tokens_per_image, shape.max_length, blank_image=shape.has_tower)
            if meter.pending is None:
                meter.pending = torch.zeros(len(COUNT_FIELDS), dtype=torch.float64, device=counts.device)
            meter.pending += counts
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _reduced_pending(self, meter: _Meter) -> list[float]:
        """This interval's counts summed over processes (collective), then cleared."""
        if meter.pending is None:
            buf = torch.zeros(len(COUNT_FIELDS), dtype=torch.float64, device=self.args.device)
        else:
            buf = meter.pending.clone()
            meter.pending.zero_()
        if self.accelerator.num_processes > 1:
            buf = self.accelerator.reduce(buf.to(self.args.device), reduction="sum")
        return buf.tolist()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step_log, final_log = "loss" in logs, "train_runtime" in logs
        if step_log or final_log:
            meter = self._throughput_meter()
            interval = self._reduced_pending(meter)
            meter.totals = tuple(a + b for a, b in zip(meter.totals, interval))
            now = time.perf_counter()
            devices = self.accelerator.num_processes
            if step_log:
                logs.update(throughput_fields(interval, now - meter.last, meter.shape, meter.peak_flops, devices))
            else:
                run = throughput_fields(meter.totals, now - meter.start, meter.shape, meter.peak_flops, devices,
                                        prefix="throughput_")
                if run:
                    run.update(throughput_real_tokens=int(meter.totals[0]), throughput_samples=int(meter.totals[3]),
                               throughput_seconds=round(now - meter.start, 3))
                    logs.update(run)
                    if self.is_world_process_zero():
                        print(summary_line(run), flush=True)
            meter.last = now
        super().log(logs, start_time)
