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
* ``mfu``: the LLM's model FLOPs utilization, ``(4 N + 2 N_trainable) x real tokens + 12 layers
  width sum(s^2)`` over (seconds x peak FLOP/s x processes). ``N``: the LLM's parameters without
  the input embedding lookup (``lm_head`` counted; LoRA weights counted, they run too), ``2 N``
  forward, ``2 N`` backward to the activations, ``2 N_trainable`` weight gradients; attention
  ``4 layers width s`` forward + ``8`` backward per token of a sequence of ``s`` tokens (each
  sample its own ``s``: a packed segment or an unpadded row). Padding positions are not useful
  work and do not count; gradient-checkpointing recompute does not count either (MFU, not HFU);
* ``mfu_vision``: the same for the vision side, which ``mfu`` leaves out: the tower (``2 N_vision``
  per patch token plus its attention, forward only unless the tower trains) and the projector with
  its add-on modules (``2 N_projector`` per tower token + ``2 N_trainable`` for its gradients). A
  text-only training batch still runs one blank image through the tower (so every rank builds the
  same graph); that image counts here but adds no image tokens.

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

The FLOP formulas (:class:`ModelShape`, :func:`transformer_flops`) are shared with
``scripts/bench/gpu_throughput.py``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava.constants import IMAGE_TOKEN_INDEX

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


# ---- FLOPs ----

def transformer_flops(params: float, trainable: float, tokens: float, sum_sq_lengths: float, layers: int,
                      attn_width: int, backward: bool) -> float:
    """Training FLOPs over ``tokens`` tokens in sequences whose squared lengths add up to ``sum_sq_lengths``.

    Forward: ``2 params`` per token and ``4 layers attn_width s^2`` per sequence of ``s`` tokens
    (``Q K^T`` and ``A V``). ``backward`` (gradients flow through to the inputs): ``2 params`` per
    token more and twice the attention. Weight gradients: ``2 trainable`` per token.
    """
    dense = 2.0 * params * tokens
    attention = 4.0 * layers * attn_width * sum_sq_lengths
    total = dense + attention + 2.0 * trainable * tokens
    if backward:
        total += dense + 2.0 * attention
    return total


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP estimate needs of a model (:func:`model_shape`)."""

    llm_params: int
    llm_trainable: int
    layers: int
    attn_width: int
    tokens_per_image: int = 1
    """LLM positions per ``<image>`` placeholder (1 without a vision tower)."""
    max_length: int | None = None
    vision_params: int = 0
    vision_trainable: int = 0
    vision_layers: int = 0
    vision_width: int = 0
    vision_seq: int = 0
    """Positions per image inside the tower (patches + class token)."""
    projector_params: int = 0
    projector_trainable: int = 0
    projector_tokens: int = 0
    """Tower tokens per image that go through the projector."""

    @property
    def has_tower(self) -> bool:
        return self.vision_seq > 0

    def llm_flops(self, real_tokens: float, sum_sq_lengths: float) -> float:
        """LLM training FLOPs for ``real_tokens`` tokens in samples whose squared lengths sum as given."""
        return transformer_flops(self.llm_params, self.llm_trainable, real_tokens, sum_sq_lengths, self.layers,
                                 self.attn_width, backward=True)

    def vision_flops(self, images: float) -> float:
        """Tower + projector training FLOPs for ``images`` images."""
        if not self.has_tower:
            return 0.0
        tower_trains = self.vision_trainable > 0
        tower = transformer_flops(self.vision_params, self.vision_trainable, images * self.vision_seq,
                                  images * self.vision_seq ** 2, self.vision_layers, self.vision_width, tower_trains)
        projector = transformer_flops(self.projector_params, self.projector_trainable, images * self.projector_tokens,
                                      0.0, 0, 0, tower_trains)
        return tower + projector


def param_count(param: torch.nn.Parameter) -> int:
    """Elements of a parameter; its full size under ZeRO-3 (``ds_numel``), where the local one is a shard."""
    return int(getattr(param, "ds_numel", None) or param.numel())


def _by_id(params: Iterable[torch.nn.Parameter]) -> dict[int, torch.nn.Parameter]:
    return {id(p): p for p in params}


def _counts(params: dict[int, torch.nn.Parameter]) -> tuple[int, int]:
    """(all, trainable) elements."""
    return (sum(param_count(p) for p in params.values()),
            sum(param_count(p) for p in params.values() if p.requires_grad))


def _llm_geometry(config: Any) -> tuple[int, int]:
    """(layers, attention width = heads x head dim) of the LLM's config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return int(text.num_hidden_layers), int(heads * head_dim)


def model_shape(model: Any) -> ModelShape:
    """The :class:`ModelShape` of a (possibly PEFT-wrapped) LLaVA model or plain causal LM."""
    everything = _by_id(model.parameters())
    get_model = getattr(model, "get_model", None)
    base = get_model() if get_model is not None else None
    tower = base.get_vision_tower() if base is not None and hasattr(base, "get_vision_tower") else None
    vision = _by_id(tower.parameters()) if tower is not None else {}
    projector: dict[int, torch.nn.Parameter] = {}
    if tower is not None and getattr(base, "mm_projector", None) is not None:
        projector = _by_id(p for m in base.projector_modules() for p in m.parameters())
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    head_ids = set(_by_id(head.parameters())) if head is not None else set()
    lookup = set(_by_id(embed.parameters())) - head_ids if embed is not None else set()  # tied: lm_head stays
    llm = {i: p for i, p in everything.items() if i not in vision and i not in projector and i not in lookup}
    layers, width = _llm_geometry(model.config)
    n_llm, n_llm_trainable = _counts(llm)
    shape = dict(llm_params=n_llm, llm_trainable=n_llm_trainable, layers=layers, attn_width=width,
                 max_length=getattr(model.config, "tokenizer_model_max_length", None))
    if tower is not None:
        from llava.model.llava_arch import image_tokens_per_sample

        n_vis, n_vis_trainable = _counts(vision)
        n_proj, n_proj_trainable = _counts(projector)
        shape.update(tokens_per_image=image_tokens_per_sample(model, tower), vision_params=n_vis,
                     vision_trainable=n_vis_trainable, vision_layers=int(tower.config.num_hidden_layers),
                     vision_width=int(tower.config.hidden_size),
                     vision_seq=int(tower.num_patches) + 1,  # CLIP runs a class token with the patches
                     projector_params=n_proj, projector_trainable=n_proj_trainable,
                     projector_tokens=int(getattr(tower, "num_tokens", tower.num_patches)))
    return ModelShape(**shape)


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
