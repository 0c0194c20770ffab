"""Training throughput of a LLaVA-1.5-7B-shaped model with random bf16 weights (no downloads), as train() runs it.

Vicuna-7B config + CLIP ViT-L/14-336 config, built locally with random weights in train()'s order
(LLM, input gradients for gradient checkpointing, LoRA when asked, then tower and projector;
activation checkpointing as the Trainer enables it). Rows, per attention implementation (sdpa, and
flash-attention-2 when importable on a GPU):

* stage 1: projector only, batch 32 (LLaVA-1.5 pretraining);
* stage 2 full: full fine-tuning (LLM + projector, tower frozen), batch 16 (LLaVA-1.5 fine-tuning);
* stage 2 lora: LoRA r=128, alpha 256 on every LLM linear (train.py's ``apply_lora``) + projector.

Each row trains ``--steps`` steps ``--repeats`` times (default 3, after 2 warmup steps) and prints the
median [min-max] over the repeats of samples/s, real tokens/s and MFU per component (vision
tower, projector, LLM: :func:`llava.train.flops.component_mfu`, the FLOPs training logs), with
padding, step time and peak memory (CUDA: max allocated in the row; CPU: the process's max RSS so far).

``--packing``: stage 2 (full, then LoRA) on synthetic samples (200-1400 text tokens + one 576-token
image, a quarter text-only with 200-1500 tokens), padded batches of ``batch`` samples
(``DataCollatorForSupervisedDataset``) vs packed: first-fit-decreasing packs of <= 2048 tokens,
``batch`` packs a step, through train()'s path: attention from ``packed_attention_choice`` (sdpa ->
``llava_packed_sdpa``, once per sample) and ``PackedCollator(one_row=runs_per_sample(attention))``,
the padding-free path that puts a step's packs end to end in one row.

    python scripts/bench/gpu_throughput.py                  # on a GPU; appends rows to BENCHMARKS.md
    python scripts/bench/gpu_throughput.py --packing
    python scripts/bench/gpu_throughput.py --device cpu --quick --packing --peak_tflops 1   # seconds, tiny shapes

``--json PATH`` writes the rows; ``--quick`` never appends. MFU needs the peak dense bf16 FLOP/s:
``--peak_tflops``, else the table in llava/train/throughput.py by GPU name (none on a CPU).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.dataset import DataCollatorForSupervisedDataset
from llava.data.packing import DEFAULT_PACKING_BUFFER, PackedCollator, first_fit_decreasing, sequence_lengths
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.packing import runs_per_sample
from llava.train.flops import COMPONENTS, component_mfu
from llava.train.throughput import COUNT_FIELDS, batch_counts, model_shape, resolve_peak_flops, throughput_fields
from llava.train.train import apply_lora, packed_attention_choice

VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768)
TINY_LLM = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=2048)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56,
                 patch_size=14, projection_dim=16)
CAPACITY = 2048  # tokens per row / pack (tokenizer_model_max_length)
# synthetic samples for --packing: (shortest, longest) text tokens with an image, the same text-only, pack capacity
PACKING_FULL = ((200, 1400), (200, 1500), CAPACITY)
PACKING_QUICK = ((20, 200), (20, 240), 256)
VISION_ARGS = SimpleNamespace(mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
                              mm_vision_select_feature="patch", mm_patch_merge_type="flat",
                              pretrain_mm_mlp_adapter=None)
LORA_ARGS = SimpleNamespace(lora_r=128, lora_alpha=256, lora_dropout=0.05, lora_bias="none", bits=16, bf16=True)
STAGES = {"1": ("projector", 32), "2 full": ("full", 16), "2 lora": ("lora", 16)}
"""Row label: (what trains, batch size) as LLaVA-1.5's scripts (per device)."""
WARMUP = 2  # untimed steps per row
METRICS = ("samples_per_second", "tokens_per_second", *(f"mfu_{c}" for c in COMPONENTS), "step_s")


def clip_dir(tmp: Path, quick: bool) -> Path:
    """A random CLIP tower + image processor saved under ``tmp`` (once)."""
    out = tmp / "clip"
    if not out.exists():
        cfg = TINY_CLIP if quick else CLIP_L336
        CLIPVisionModel(CLIPVisionConfig(**cfg)).to(torch.bfloat16).save_pretrained(out)
        size = cfg["image_size"]
        CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            out)
    return out


def build(tmp: Path, quick: bool, attn: str, device: torch.device, mode: str) -> Any:
    """The model in train()'s order; ``mode``: ``projector`` (stage 1), ``full`` or ``lora`` (stage 2)."""
    tower_dir = clip_dir(tmp, quick)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = LlavaLlamaForCausalLM(LlavaConfig(**(TINY_LLM if quick else VICUNA_7B), attn_implementation=attn))
        model.config.use_cache = False
        model.enable_input_require_grads()  # run_stage, for --gradient_checkpointing (before LoRA and the tower)
        net = apply_lora(model, LORA_ARGS) if mode == "lora" else model
        model.get_model().initialize_vision_modules(SimpleNamespace(vision_tower=str(tower_dir), **vars(VISION_ARGS)))
    finally:
        torch.set_default_dtype(torch.float32)
    model.get_vision_tower().to(device=device, dtype=torch.bfloat16)
    model.get_model().mm_projector.to(device=device, dtype=torch.bfloat16)
    model.config.tokenizer_model_max_length = CAPACITY
    if mode == "projector":  # --tune_mm_mlp_adapter True
        model.requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
    net.train()
    enable = getattr(net, "activation_checkpointing_enable", None) or net.gradient_checkpointing_enable
    enable()  # what Trainer.train() does for --gradient_checkpointing True (older transformers: the second name)
    return net


def fixed_batch(model: Any, bsz: int, text_len: int) -> dict[str, torch.Tensor]:
    """``bsz`` equal-length samples with one image each (the rows without --packing)."""
    size = model.get_vision_tower().config.image_size
    ids = torch.randint(3, model.config.vocab_size, (bsz, text_len))
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    labels[:, : text_len // 2] = IGNORE_INDEX
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                images=torch.randn(bsz, 3, size, size, dtype=torch.bfloat16))


def synthetic_samples(model: Any, n: int, quick: bool) -> list[dict[str, torch.Tensor]]:
    """``n`` dataset items (``input_ids``, ``labels``, optional ``image``) of varied lengths, seeded."""
    (lo, hi), (lo_text, hi_text), _ = PACKING_QUICK if quick else PACKING_FULL
    size = model.get_vision_tower().config.image_size
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        with_image = i % 4 != 3
        a, b = (lo, hi) if with_image else (lo_text, hi_text)
        length = int(torch.randint(a, b + 1, (1,), generator=gen))
        ids = torch.randint(3, model.config.vocab_size, (length,), generator=gen)
        labels = ids.clone()
        labels[: length // 2] = IGNORE_INDEX
        item = dict(input_ids=ids, labels=labels)
        if with_image:
            ids[1], labels[1] = IMAGE_TOKEN_INDEX, IGNORE_INDEX
            item["image"] = torch.randn(3, size, size, generator=gen).to(torch.bfloat16)
        items.append(item)
    return items


def padded_batches(items: list[dict[str, torch.Tensor]], bsz: int, capacity: int) -> list[dict[str, torch.Tensor]]:
    """Batches of ``bsz`` samples, right-padded (train() without --packing)."""
    collate = DataCollatorForSupervisedDataset(SimpleNamespace(model_max_length=capacity, pad_token_id=0))
    return [collate(items[i:i + bsz]) for i in range(0, len(items), bsz)]


def packed_batches(items: list[dict[str, torch.Tensor]], bsz: int, capacity: int, tokens_per_image: int,
                   attn: str) -> tuple[list[dict[str, torch.Tensor]], str]:
    """Batches of ``bsz`` packs through train()'s collator for ``attn``; and that collator, in words."""
    lengths = sequence_lengths([it["input_ids"].numel() for it in items], [int("image" in it) for it in items],
                               tokens_per_image)
    packs = first_fit_decreasing(lengths, capacity=capacity, seed=0, buffer_size=DEFAULT_PACKING_BUFFER)
    plain = DataCollatorForSupervisedDataset(SimpleNamespace(model_max_length=capacity, pad_token_id=0))
    collate = PackedCollator(plain.pad_token_id, one_row=runs_per_sample(attn), unpacked=plain)  # as run_stage
    batches = [collate([[items[i] for i in p] for p in packs[j:j + bsz]]) for j in range(0, len(packs), bsz)]
    return batches, f"PackedCollator(one_row={collate.one_row})"


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, "process max RSS"


def timed_pass(net: Any, opt: torch.optim.Optimizer, batches: list[dict[str, torch.Tensor]],
               device: torch.device, shape: Any) -> tuple[float, torch.Tensor]:
    """One training pass over ``batches``: (seconds, summed COUNT_FIELDS)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counts = torch.zeros(len(COUNT_FIELDS), dtype=torch.float64)
    seconds = 0.0
    for b in batches:
        sync()
        start = time.perf_counter()
        net(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        seconds += time.perf_counter() - start
        counts += batch_counts(b, shape.tokens_per_image, shape.max_length, blank_image=True).cpu()
    return seconds, counts


def measure(net: Any, batches: list[dict[str, torch.Tensor]], repeats: int, device: torch.device,
            peak_flops: float | None) -> dict[str, Any]:
    """:data:`WARMUP` untimed steps, then ``repeats`` timed passes: per-repeat metrics, padding, peak memory."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, fused=device.type == "cuda")
    shape = model_shape(net)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    timed_pass(net, opt, (on_device * WARMUP)[:WARMUP], device, shape)
    per_repeat: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(repeats):
        seconds, counts = timed_pass(net, opt, on_device, device, shape)
        fields = throughput_fields(counts.tolist(), seconds, shape, peak_flops)
        fields["step_s"] = seconds / len(on_device)
        if peak_flops:
            parts = component_mfu(shape, counts.tolist(), seconds, peak_flops)
            fields.update({f"mfu_{k}": v for k, v in parts.items()})
        for k in METRICS:
            if k in fields:
                per_repeat[k].append(float(fields[k]))
    memory, memory_kind = peak_memory(device)
    return dict(per_repeat={k: v for k, v in per_repeat.items() if v}, padding_fraction=fields["padding_fraction"],
                peak_gib=memory, memory=memory_kind, rows_per_batch=max(b["input_ids"].shape[0] for b in batches),
                trainable=sum(p.numel() for p in params))


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def fmt(s: dict[str, float], scale: float = 1.0, digits: int = 2, unit: str = "", spec: str = "f") -> str:
    """``median [min-max]``; ``spec`` ``f``: ``digits`` decimals, ``g``: ``digits`` significant digits."""
    def one(x: float) -> str:
        return f"{scale * x:.{digits}{spec}}"

    return f"{one(s['median'])}{unit} [{one(s['min'])}-{one(s['max'])}]"


def fmt_mfu(s: dict[str, float]) -> str:
    return fmt(s, 100, 3, "%", "g")


def report(gpu: str, row: dict[str, Any]) -> str:
    """One human line per row (median [min-max] over the repeats)."""
    s = row["stats"]
    mfu = (" ".join(f"{c} {fmt_mfu(s[f'mfu_{c}'])}" for c in COMPONENTS) if "mfu_llm" in s
           else "n/a (--peak_tflops)")
    return (f"{gpu} | {row['attn']} | stage {row['stage']} | {row['batching']} ({row['collator']}) | "
            f"batch {row['batch']} | {fmt(s['samples_per_second'])} samples/s | "
            f"{fmt(s['tokens_per_second'], digits=0)} real tokens/s | MFU {mfu} | "
            f"padding {100 * row['padding_fraction']:.1f}% | step {fmt(s['step_s'], digits=3)} s | "
            f"peak {row['peak_gib']:.2f} GiB ({row['memory']})")


def ratio_line(padded: dict[str, Any], packed: dict[str, Any]) -> str:
    """Packed / padded medians on the same samples."""
    def ratio(key: str) -> float:
        a, b = padded["stats"][key]["median"], packed["stats"][key]["median"]
        return b / a if a else float("nan")

    return (f"stage {packed['stage']} packed / padded: useful tokens/s x{ratio('tokens_per_second'):.2f}, "
            f"step time x{ratio('step_s'):.2f}, padding {100 * padded['padding_fraction']:.1f}% -> "
            f"{100 * packed['padding_fraction']:.1f}%")


def plan(packing: bool) -> list[tuple[str, str]]:
    """(stage label, batching) of each row."""
    if packing:
        return [(stage, batching) for stage in ("2 full", "2 lora") for batching in ("padded", "packed")]
    return [(stage, "fixed") for stage in STAGES]


def one_row(a: argparse.Namespace, tmp: Path, device: torch.device, attn: str, stage: str, batching: str,
            peak: float | None) -> dict[str, Any]:
    """Build, batch and time one row."""
    mode, bsz = STAGES[stage]
    bsz = 2 if a.quick else bsz
    row_attn = packed_attention_choice(attn) if batching == "packed" else attn
    net = build(tmp, a.quick, row_attn, device, mode)
    collator = "DataCollatorForSupervisedDataset"
    if batching == "fixed":
        batches, collator = [fixed_batch(net, bsz, a.text_len)] * a.steps, "equal-length rows"
    else:
        capacity = (PACKING_QUICK if a.quick else PACKING_FULL)[2]
        items = synthetic_samples(net, a.steps * bsz, a.quick)
        if batching == "padded":
            batches = padded_batches(items, bsz, capacity)
        else:
            batches, collator = packed_batches(items, bsz, capacity, model_shape(net).tokens_per_image, row_attn)
    try:
        got = measure(net, batches, a.repeats, device, peak)
    finally:
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    stats = {k: spread(v) for k, v in got.pop("per_repeat").items()}
    return dict(attn=row_attn, stage=stage, mode=mode, batching=batching, collator=collator, batch=bsz,
                repeats=a.repeats, steps=len(batches), stats=stats, **got)


def run_all(a: argparse.Namespace, device: torch.device, gpu: str, peak: float | None) -> list[dict[str, Any]]:
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and device.type == "cuda"
                        else [])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for attn in attns:
            padded: dict[str, dict[str, Any]] = {}
            for stage, batching in plan(a.packing):
                try:
                    row = one_row(a, Path(tmp), device, attn, stage, batching, peak)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    print(f"{gpu} | {attn} | stage {stage} | {batching} | out of memory", flush=True)
                    continue
                rows.append(row)
                print(report(gpu, row), flush=True)
                if batching == "padded":
                    padded[stage] = row
                elif batching == "packed" and stage in padded:
                    print(f"{gpu} | {attn} | {ratio_line(padded[stage], row)}", flush=True)
    return rows


def append_rows(out: Path, gpu: str, rows: list[dict[str, Any]]) -> None:
    """Rows for BENCHMARKS.md: medians [min-max] over the repeats."""
    header = "" if out.exists() else (
        "# Benchmarks\n\nMedian [min-max] over the repeats.\n\n| date | GPU | attention | stage | batching | batch | "
        "samples/s | real tokens/s | MFU vision | MFU projector | MFU LLM | padding | step s | peak GiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    with out.open("a") as f:
        f.write(header)
        for r in rows:
            s = r["stats"]
            mfu = " | ".join(fmt_mfu(s[f"mfu_{c}"]) if f"mfu_{c}" in s else "n/a" for c in COMPONENTS)
            f.write(f"| {datetime.date.today()} | {gpu} | {r['attn']} | {r['stage']} | {r['batching']} | {r['batch']} "
                    f"| {fmt(s['samples_per_second'])} | {fmt(s['tokens_per_second'], digits=0)} | {mfu} | "
                    f"{100 * r['padding_fraction']:.1f}% | {fmt(s['step_s'], digits=3)} | {r['peak_gib']:.1f} |\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--quick", "--tiny", action="store_true", help="tiny shapes: seconds on a CPU (never appends)")
    p.add_argument("--steps", type=int, default=None, help="timed steps a repeat (default 10, --quick 2); "
                   "--packing: samples = steps x batch")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row (>= 3): median and range")
    p.add_argument("--text_len", type=int, default=None, help="text tokens of a fixed-batch sample (128, --quick 32)")
    p.add_argument("--packing", action="store_true", help="stage 2 (full, LoRA): padded batches vs packed rows")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of the device (default: the table in llava/train/throughput.py)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "BENCHMARKS.md"))
    a = p.parse_args(argv)
    if a.repeats < 3:
        p.error(f"--repeats must be >= 3 (median and range over the repeats), got {a.repeats}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    a.steps = a.steps or (2 if a.quick else 10)
    a.text_len = a.text_len or (32 if a.quick else 128)
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    use_cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    gpu = torch.cuda.get_device_name(device) if use_cuda else "cpu"
    peak, source = resolve_peak_flops(device, a.peak_tflops)
    print(f"peak FLOP/s: {peak:.3g} ({source})" if peak else source, flush=True)
    print(f"median [min-max] over {a.repeats} repeats of {a.steps} steps", flush=True)
    rows = run_all(a, device, gpu, peak)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(device=gpu, peak_flops=peak, rows=rows), indent=1))
    if not a.no_append and not a.quick:
        append_rows(Path(a.out), gpu, rows)


if __name__ == "__main__":
    main()
