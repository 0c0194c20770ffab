"""GPU throughput of a LLaVA-1.5-7B-shaped model with random bf16 weights (no downloads).

Vicuna-7B config + CLIP ViT-L/14-336 config, built locally with random weights. Times
stage 1 (projector only, batch 32) and stage 2 (LoRA r=128 on every LLM linear, batch 16) training
steps with gradient checkpointing, for SDPA and (when importable) flash-attention-2; prints
samples/s, real tokens/s, padding, peak memory and MFU, and appends a row per run to BENCHMARKS.md.

    python scripts/bench/gpu_throughput.py                 # on a GPU machine
    python scripts/bench/gpu_throughput.py --packing       # stage 2: padded batches vs packed rows
    python scripts/bench/gpu_throughput.py --tiny --steps 2 --no-append   # CPU smoke test

``--packing`` measures stage 2 only, twice on the same synthetic samples (``--steps`` x batch of
them; 200-1400 text tokens plus one 576-token image, a quarter text-only with 200-1500 tokens):
padded batches of ``batch`` samples (upstream's collator) and packed rows
(:func:`llava.data.packing.first_fit_decreasing` into rows of 2048 tokens, ``batch`` rows a step,
:class:`llava.data.packing.PackedCollator`; under sdpa the packed rows run attention once per sample,
``llava_packed_sdpa``, as training with ``--packing`` does); it prints useful tokens/s, padding, peak
memory, step time and the packed/padded ratios.

FLOPs and MFU come from :mod:`llava.train.throughput` (the numbers training logs): per real LLM
token ``4 N + 2 N_trainable`` plus ``12 layers width s`` of attention (each sample its own ``s``),
the vision tower and projector apart (``MFU vision``); gradient-checkpointing recompute is not
counted. Peak dense bf16 FLOP/s: ``--peak_tflops``, else the table in that module by GPU name (no
MFU for an unknown device).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.packing import PACKED_SDPA
from llava.train.throughput import batch_counts, model_shape, resolve_peak_flops, throughput_fields

VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768)
TINY_LLM = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=2048)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56,
                 patch_size=14, projection_dim=16)
CAPACITY = 2048  # tokens per row (tokenizer_model_max_length)
# synthetic samples for --packing: (shortest, longest) text tokens with an image, the same text-only, row capacity
PACKING_FULL = ((200, 1400), (200, 1500), CAPACITY)
PACKING_TINY = ((20, 200), (20, 240), 256)


def build(tmp: Path, tiny: bool, attn: str, device: torch.device) -> LlavaLlamaForCausalLM:
    clip_dir = tmp / "clip"
    if not clip_dir.exists():
        tower = CLIPVisionModel(CLIPVisionConfig(**(TINY_CLIP if tiny else CLIP_L336)))
        tower.to(torch.bfloat16).save_pretrained(clip_dir)
        from transformers import CLIPImageProcessorPil

        size = (TINY_CLIP if tiny else CLIP_L336)["image_size"]
        CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            clip_dir)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = LlavaLlamaForCausalLM(LlavaConfig(**(TINY_LLM if tiny else VICUNA_7B), attn_implementation=attn))
        args = SimpleNamespace(vision_tower=str(clip_dir), mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
                               mm_vision_select_feature="patch", mm_patch_merge_type="flat",
                               pretrain_mm_mlp_adapter=None)
        model.get_model().initialize_vision_modules(args)
    finally:
        torch.set_default_dtype(torch.float32)
    model.get_vision_tower().to(device=device, dtype=torch.bfloat16)
    model.get_model().mm_projector.to(device=device, dtype=torch.bfloat16)
    model.config.tokenizer_model_max_length = CAPACITY
    return model


def fixed_batch(model: LlavaLlamaForCausalLM, bsz: int, text_len: int) -> dict[str, torch.Tensor]:
    """``bsz`` equal-length samples with one image each (stages 1 and 2 without --packing)."""
    size = model.get_vision_tower().config.image_size
    ids = torch.randint(3, model.config.vocab_size, (bsz, text_len))
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    labels[:, : text_len // 2] = IGNORE_INDEX
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                images=torch.randn(bsz, 3, size, size, dtype=torch.bfloat16))


def synthetic_samples(model: LlavaLlamaForCausalLM, n: int, tiny: bool) -> list[dict[str, torch.Tensor]]:
    """``n`` dataset items (``input_ids``, ``labels``, optional ``image``) of varied lengths, seeded."""
    (lo, hi), (lo_text, hi_text), _ = (PACKING_TINY if tiny else PACKING_FULL)
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


def padded_and_packed(items: list[dict[str, torch.Tensor]], rows: int, capacity: int,
                      tokens_per_image: int) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The same samples as padded batches of ``rows`` samples and as packed rows, ``rows`` a step."""
    from llava.data.dataset import DataCollatorForSupervisedDataset
    from llava.data.packing import PackedCollator, first_fit_decreasing, sequence_lengths

    padded_collate = DataCollatorForSupervisedDataset(SimpleNamespace(model_max_length=capacity, pad_token_id=0))
    padded = [padded_collate(items[i:i + rows]) for i in range(0, len(items), rows)]
    lengths = sequence_lengths([it["input_ids"].numel() for it in items], [int("image" in it) for it in items],
                               tokens_per_image)
    packs = first_fit_decreasing(lengths, capacity=capacity, seed=0, buffer_size=len(lengths))
    packed_collate = PackedCollator(pad_token_id=0)
    packed = [packed_collate([[items[i] for i in p] for p in packs[j:j + rows]]) for j in range(0, len(packs), rows)]
    return padded, packed


def trainable_net(model: LlavaLlamaForCausalLM, stage: int) -> Any:
    """Stage 1: only the projector trains; stage 2: LoRA r=128 on the LLM linears + the projector."""
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    if stage == 1:
        model.requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    net = get_peft_model(model, LoraConfig(r=128, lora_alpha=256, lora_dropout=0.05,
                                           target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"))
    model.get_model().mm_projector.requires_grad_(True)
    return net


def time_steps(net: Any, batches: list[dict[str, torch.Tensor]], warmup: int, device: torch.device,
               peak_flops: float | None) -> dict[str, float]:
    """Train on ``batches`` after ``warmup`` untimed steps on the first; step time, peak memory, logged fields."""
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    shape = model_shape(net)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    counts = torch.zeros(6, dtype=torch.float64)
    times = []
    for i, b in enumerate([on_device[0]] * warmup + on_device):
        sync()
        start = time.perf_counter()
        loss = net(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            counts += batch_counts(b, shape.tokens_per_image, shape.max_length, blank_image=True).cpu()
    total = sum(times)
    fields = throughput_fields(counts.tolist(), total, shape, peak_flops)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dict(fields, step_s=total / len(times), peak_gib=peak)


def report(gpu: str, attn: str, stage: str, bsz: int, r: dict[str, float]) -> str:
    mfu = (f"MFU {100 * r['mfu']:.1f}% LLM + {100 * r.get('mfu_vision', 0.0):.1f}% vision" if "mfu" in r
           else "MFU n/a (--peak_tflops)")
    return (f"{gpu} | {attn} | stage {stage} | batch {bsz} | {r['samples_per_second']:.2f} samples/s | "
            f"{r['tokens_per_second']:.0f} real tokens/s | padding {100 * r['padding_fraction']:.1f}% | "
            f"step {r['step_s']:.3f} s | peak {r['peak_gib']:.1f} GiB | {mfu}")


def ratio_line(padded: dict[str, float], packed: dict[str, float]) -> str:
    """Packed / padded on the same samples."""
    def ratio(key: str) -> float:
        return packed[key] / padded[key] if padded[key] else float("nan")

    return (f"packed / padded: useful tokens/s x{ratio('tokens_per_second'):.2f}, step time x{ratio('step_s'):.2f}, "
            f"peak memory x{ratio('peak_gib'):.2f}, padding {100 * padded['padding_fraction']:.1f}% -> "
            f"{100 * packed['padding_fraction']:.1f}%")


def run_all(a: argparse.Namespace, device: torch.device, gpu: str, peak: float | None) -> list[tuple]:
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and device.type == "cuda"
                        else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attn in attns:
            for stage, bsz in ((2, 16),) if a.packing else ((1, 32), (2, 16)):
                bsz = 2 if a.tiny else bsz
                model = build(Path(tmp), a.tiny, attn, device)
                net = trainable_net(model, stage)
                if a.packing:
                    tpi = model_shape(net).tokens_per_image
                    capacity = (PACKING_TINY if a.tiny else PACKING_FULL)[2]
                    padded, packed = padded_and_packed(synthetic_samples(model, a.steps * bsz, a.tiny), bsz,
                                                       capacity, tpi)
                    runs = [("2 padded", time_steps(net, padded, 1, device, peak))]
                    if attn == "sdpa":  # as train() does with --packing: sdpa once per sample, no L x L mask
                        model.set_attn_implementation(PACKED_SDPA)
                    runs.append(("2 packed", time_steps(net, packed, 1, device, peak)))
                else:
                    runs = [(str(stage), time_steps(net, [fixed_batch(model, bsz, a.text_len)] * a.steps, 2, device,
                                                    peak))]
                for label, r in runs:
                    rows.append((attn, label, bsz, r))
                    print(report(gpu, attn, label, bsz, r), flush=True)
                if a.packing:
                    print(f"{gpu} | {attn} | {ratio_line(runs[0][1], runs[1][1])}", flush=True)
                if stage == 2:
                    net.unload()
                del model, net
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def append_rows(out: Path, gpu: str, rows: list[tuple]) -> None:
    header = "" if out.exists() else (
        "# Benchmarks\n\n| date | GPU | attention | stage | batch | samples/s | real tokens/s | padding | step s | "
        "peak GiB | MFU (LLM) | MFU (vision) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    with out.open("a") as f:
        f.write(header)
        for attn, stage, bsz, r in rows:
            mfu = f"{100 * r['mfu']:.1f}% | {100 * r.get('mfu_vision', 0.0):.1f}%" if "mfu" in r else "n/a | n/a"
            f.write(f"| {datetime.date.today()} | {gpu} | {attn} | {stage} | {bsz} | {r['samples_per_second']:.2f} | "
                    f"{r['tokens_per_second']:.0f} | {100 * r['padding_fraction']:.1f}% | {r['step_s']:.3f} | "
                    f"{r['peak_gib']:.1f} | {mfu} |\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (--packing: samples = steps x batch)")
    p.add_argument("--text_len", type=int, default=128)
    p.add_argument("--packing", action="store_true", help="stage 2 only: padded batches vs packed rows")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of the device (default: the table in llava/train/throughput.py)")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "BENCHMARKS.md"))
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak, source = resolve_peak_flops(device, a.peak_tflops)
    print(f"peak FLOP/s: {peak:.3g} ({source})" if peak else source, flush=True)
    rows = run_all(a, device, gpu, peak)
    if not a.no_append:
        append_rows(Path(a.out), gpu, rows)


if __name__ == "__main__":
    main()
