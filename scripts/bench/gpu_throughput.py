"""GPU throughput of a LLaVA-1.5-7B-shaped model with random bf16 weights (no downloads).

Vicuna-7B config + CLIP ViT-L/14-336 config, built locally with random weights. Times
stage 1 (projector only, batch 32) and stage 2 (LoRA r=128 on every LLM linear, batch 16) training
steps with gradient checkpointing, for SDPA and (when importable) flash-attention-2; prints
samples/s, tokens/s, peak memory and MFU, and appends a row per run to BENCHMARKS.md.

    python scripts/bench/gpu_throughput.py                 # on a GPU machine
    python scripts/bench/gpu_throughput.py --tiny --steps 2 --no-append   # CPU smoke test

MFU = model FLOPs / (step time x peak bf16 FLOP/s). Model FLOPs per sequence token: 4·N_llm
(forward + backward to activations; the LLM's own weight gradients are not needed in either stage,
projector/LoRA weight gradients are negligible, gradient-checkpointing recompute is not counted)
+ 2 x attention (4·layers·hidden·seq per token), plus the frozen vision tower's forward
(2·N_vit per patch token). Peak bf16 dense FLOP/s: --peak_tflops (default 989, H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import LlavaConfig, LlavaLlamaForCausalLM

VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768)
TINY_LLM = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=2048)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56,
                 patch_size=14, projection_dim=16)


def build(tmp: Path, tiny: bool, attn: str, device: torch.device) -> LlavaLlamaForCausalLM:
    clip_dir = tmp / "clip"
    if not clip_dir.exists():
        tower = CLIPVisionModel(CLIPVisionConfig(**(TINY_CLIP if tiny else CLIP_L336)))
        tower.to(torch.bfloat16).save_pretrained(clip_dir)
        from transformers import CLIPImageProcessor

        size = (TINY_CLIP if tiny else CLIP_L336)["image_size"]
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
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
    model.config.tokenizer_model_max_length = 2048
    return model


def batch(model: LlavaLlamaForCausalLM, bsz: int, text_len: int, device: torch.device):
    size = model.get_vision_tower().config.image_size
    ids = torch.randint(3, model.config.vocab_size, (bsz, text_len), device=device)
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    labels[:, : text_len // 2] = IGNORE_INDEX
    images = torch.randn(bsz, 3, size, size, device=device, dtype=torch.bfloat16)
    return ids, labels, images


def run_stage(model, stage: int, bsz: int, steps: int, text_len: int, device: torch.device) -> dict[str, float]:
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    if stage == 1:
        model.requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
        net = model
    else:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(model, LoraConfig(r=128, lora_alpha=256, lora_dropout=0.05,
                                               target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"))
        model.get_model().mm_projector.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    ids, labels, images = batch(model, bsz, text_len, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        sync()
        start = time.perf_counter()
        loss = net(input_ids=ids, labels=labels, images=images).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
    step = sum(times) / len(times)
    seq = text_len - 1 + model.get_vision_tower().num_patches
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if stage == 2:
        net.unload()
    return {"step_s": step, "samples_s": bsz / step, "tokens_s": bsz * seq / step, "peak_gib": peak, "seq": seq}


def model_flops_per_step(model, bsz: int, seq: int) -> float:
    cfg = model.config
    n_llm = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" not in n and "lora_" not in n)
    n_vit = sum(p.numel() for p in model.get_vision_tower().parameters())
    vit_tokens = model.get_vision_tower().num_patches + 1
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size * seq
    return bsz * (seq * (4 * n_llm + 2 * attn) + vit_tokens * 2 * n_vit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--text_len", type=int, default=128)
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "BENCHMARKS.md"))
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and device.type == "cuda"
                        else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attn in attns:
            for stage, bsz in ((1, 32), (2, 16)):
                model = build(Path(tmp), a.tiny, attn, device)
                r = run_stage(model, stage, bsz if not a.tiny else 2, a.steps, a.text_len, device)
                flops = model_flops_per_step(model, bsz if not a.tiny else 2, r["seq"])
                mfu = flops / r["step_s"] / (a.peak_tflops * 1e12)
                rows.append((attn, stage, bsz if not a.tiny else 2, r, mfu))
                print(f"{gpu} | {attn} | stage {stage} | batch {rows[-1][2]} | {r['samples_s']:.2f} samples/s | "
                      f"{r['tokens_s']:.0f} tokens/s | peak {r['peak_gib']:.1f} GiB | MFU {100 * mfu:.1f}%", flush=True)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if not a.no_append:
        out = Path(a.out)
        header = "" if out.exists() else ("# Benchmarks\n\n| date | GPU | attention | stage | batch | samples/s | "
                                          "tokens/s | peak GiB | MFU |\n|---|---|---|---|---|---|---|---|---|\n")
        with out.open("a") as f:
            f.write(header)
            for attn, stage, bsz, r, mfu in rows:
                f.write(f"| {datetime.date.today()} | {gpu} | {attn} | {stage} | {bsz} | {r['samples_s']:.2f} | "
                        f"{r['tokens_s']:.0f} | {r['peak_gib']:.1f} | {100 * mfu:.1f}% |\n")


if __name__ == "__main__":
    main()
