"""Benchmark: training-step time per add-on flag relative to vanilla, on the tiny CPU setup.

Builds a tiny CLIP (24 layers, 64 px, patch 8 -> 8x8 = 64 tokens) and a tiny Llama in a temp dir,
then times forward + backward + AdamW step (projector and LLM trainable, like finetuning) for each
flag set at batch 8, one image per sample. Prints ms/step, the ratio to vanilla, image tokens per
sample and extra parameters. Numbers only: nothing is asserted.

    python scripts/bench/addon_step_time.py [--steps 8 --batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.testing.tiny_llava import build_tiny_llava
from llava.testing.tiny_models import build_clip, build_llm

VARIANTS = {
    "vanilla": {},
    "normalize": dict(normalize_projector=True),
    "multilayer": dict(use_multilayer_features=True),
    "compression(16)": dict(compression_after_projection=True, final_spatial_size=16),
    "rope2d": dict(twoD_vision_embedding=True),
    "interleave(k=8)": dict(interleave=True, interleave_sparsity=8),
    "coordinates": dict(add_spatial_coordinates=True),
    "multiNorm": dict(normalize_projector=True, use_multilayer_features=True),
}


def time_variant(llm: str, clip: str, tokenizer, flags: dict, steps: int, batch: int) -> tuple[float, int, int, int]:
    model = build_tiny_llava(llm, clip, **flags)
    model.initialize_vision_tokenizer(SimpleNamespace(), tokenizer)
    base = build_tiny_llava(llm, clip) if flags else model
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in base.parameters())
    model.train()
    model.get_vision_tower().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    text = torch.randint(3, 500, (batch, 40))
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, 1), IMAGE_TOKEN_INDEX), text], 1)
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    images = torch.randn(batch, 3, 64, 64)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels, images=images).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - start)
    tokens = int(model.prepare_multimodal_splice(ids[:1], None, None, images[:1]).image_mask.sum())
    seq = model.prepare_multimodal_splice(ids[:1], None, None, images[:1]).inputs_embeds.shape[1]
    return statistics.median(times) * 1000, tokens, seq - ids.shape[1] + 1, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        clip = build_clip(Path(tmp) / "clip", num_layers=24, hidden=32, image_size=64, patch_size=8)
        llm = build_llm(Path(tmp) / "llm", "llama", hidden=128, layers=2)
        tok = AutoTokenizer.from_pretrained(llm)
        rows = []
        for name, flags in VARIANTS.items():
            ms, feats, positions, extra = time_variant(llm, clip, tok, flags, args.steps, args.batch)
            rows.append((name, ms, feats, positions, extra))
    base = rows[0][1]
    print(f"threads={torch.get_num_threads()} batch={args.batch} steps={args.steps} (median ms/step)")
    print(f"{'variant':<18}{'ms/step':>9}{'x vanilla':>11}{'img feats':>11}{'img positions':>15}{'extra params':>14}")
    for name, ms, feats, positions, extra in rows:
        print(f"{name:<18}{ms:>9.1f}{ms / base:>11.2f}{feats:>11}{positions:>15}{extra:>14}")


if __name__ == "__main__":
    main()
