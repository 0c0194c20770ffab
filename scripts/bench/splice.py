"""Benchmark: vectorized multimodal splice vs a naive per-sample loop (upstream-style), batch 16.

Prints milliseconds per call for both and their ratio. Shapes default to LLaVA-1.5-7B's
(576 image tokens of width 4096) with a small vocabulary; no model weights are needed.

    python scripts/bench/splice.py [--batch 16 --hidden 4096 --image_tokens 576 --text_len 120]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_splice import splice_image_features


def naive_splice(input_ids, attention_mask, labels, feats, embed):
    """Per-sample Python loop: split at placeholders, embed chunks, concatenate, pad (upstream's way)."""
    new_embeds, new_labels, img = [], [], 0
    for ids, mask, lab in zip(input_ids, attention_mask.bool(), labels):
        ids, lab = ids[mask], lab[mask]
        where = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
        bounds = [-1, *where, ids.shape[0]]
        parts, lparts = [], []
        for j in range(len(bounds) - 1):
            chunk = ids[bounds[j] + 1 : bounds[j + 1]]
            parts.append(embed(chunk))
            lparts.append(lab[bounds[j] + 1 : bounds[j + 1]])
            if j < len(where):
                parts.append(feats[img])
                lparts.append(torch.full((feats.shape[1],), IGNORE_INDEX, dtype=lab.dtype))
                img += 1
        new_embeds.append(torch.cat(parts))
        new_labels.append(torch.cat(lparts))
    width = max(e.shape[0] for e in new_embeds)
    out = torch.zeros(len(new_embeds), width, new_embeds[0].shape[-1])
    out_lab = torch.full((len(new_embeds), width), IGNORE_INDEX)
    out_mask = torch.zeros(len(new_embeds), width, dtype=torch.bool)
    for i, (e, lab_i) in enumerate(zip(new_embeds, new_labels)):
        out[i, : e.shape[0]], out_lab[i, : e.shape[0]], out_mask[i, : e.shape[0]] = e, lab_i, True
    return out, out_mask, out_lab


def make_batch(batch: int, text_len: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, text_len), generator=g)
    lengths = torch.randint(text_len // 2, text_len + 1, (batch,), generator=g)
    mask = torch.arange(text_len).unsqueeze(0) < lengths.unsqueeze(1)
    ids[:, 1] = IMAGE_TOKEN_INDEX
    ids[~mask] = 0
    labels = ids.masked_fill(~mask | (ids == IMAGE_TOKEN_INDEX), IGNORE_INDEX)
    return ids, mask.long(), labels


def time_call(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--image_tokens", type=int, default=576)
    parser.add_argument("--text_len", type=int, default=120)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    embed = nn.Embedding(args.vocab, args.hidden)
    ids, mask, labels = make_batch(args.batch, args.text_len, args.vocab)
    feats = torch.randn(args.batch, args.image_tokens, args.hidden)
    with torch.no_grad():
        fast = splice_image_features(ids, mask, labels, feats, embed)
        slow_e, slow_m, slow_l = naive_splice(ids, mask, labels, feats, embed)
        assert torch.equal(fast.inputs_embeds, slow_e) and torch.equal(fast.labels, slow_l)
        t_fast = time_call(lambda: splice_image_features(ids, mask, labels, feats, embed), args.repeats)
        t_slow = time_call(lambda: naive_splice(ids, mask, labels, feats, embed), args.repeats)
    print(f"batch={args.batch} hidden={args.hidden} image_tokens={args.image_tokens} text_len<={args.text_len} "
          f"threads={torch.get_num_threads()}")
    print(f"vectorized splice: {t_fast:.2f} ms/batch")
    print(f"naive per-sample loop: {t_slow:.2f} ms/batch")
    print(f"speedup (naive / vectorized): {t_slow / t_fast:.2f}x")


if __name__ == "__main__":
    main()
