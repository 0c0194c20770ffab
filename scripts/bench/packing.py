"""Benchmark: padded batches (``--group_by_modality_length``) vs packed rows (``--packing``) on CPU.

The same samples, drawn from a length mixture shaped like ``llava_v1_5_mix665k``, are trained on
(forward + backward + AdamW step; projector and LLM trainable, CLIP frozen; fp32, sdpa) by a tiny
LLaVA in each mode, at 576 image tokens (24x24 CLIP grid) and at 16 (``--compression_after_projection
--final_spatial_size 16``, same tower). Each mode runs in its own subprocess; one run prints useful
tokens/s, processed-token waste and peak memory per mode, and the packed/padded ratios.

    python scripts/bench/packing.py [--image-tokens 576 16] [--samples 128 | --steps 8] [--profile]
    python scripts/bench/packing.py --modes padded packed packed+groups   # also time the grouped packing
    python scripts/bench/packing.py --quick          # smoke run (< 60 s, h=64: says nothing about speed)

**Composition**: ``scripts/bench/mix665k.py`` (the per-source counts and where they come from, and
the modelled turn lengths).

**Modes.** ``padded``: ``get_modality_length_grouped_indices`` (16 per device, upstream stage 2), then
``DataCollatorForSupervisedDataset``; sampler world size 1 (a device's 16 span their megabatch's
lengths either way, ``split_to_even_chunks`` balancing totals; world size 8 would put most of a small
sample in the mixed-modality leftover megabatch). ``packed``: ``first_fit_decreasing`` into 2048 rows
without groups (``--packing`` alone), packs shuffled; ``packed+groups`` (timed only with ``--modes``):
groups 1 = image / 0 = text and the modality-grouped sampler over packs (``--packing
--group_by_modality_length``). Packed rows per step: round(16 x mean length / 2048), about a padded
step's real tokens. The last table redoes every mode's waste on a 20K pool at world size 8.

**Metrics.** real tokens: non-padding LLM positions, image tokens included; processed: batch x width
fed to the LLM (read from its inputs); waste = 1 - real / processed; useful tokens/s: real tokens /
time of fwd+bwd+step (collation excluded; the first step runs once untimed before). Peak memory:
``ru_maxrss`` of the mode's subprocess, and its rise during training (the ratio's basis).

**Rows.** With per-sample attention (``packed``, ``packed+groups``) a step's packs go end to end
into one row, as training does (``PackedCollator(one_row=True)``): nothing is padded. ``packed+mask``
keeps one row per pack, right-padded to the longest, as eager / flex / a dense mask need.

**Attention.** ``padded``: sdpa with transformers' (B, 1, L, L) padding mask, every row L^2 of its
batch's width. ``packed`` / ``packed+groups``: what ``--packing`` training runs, sdpa once per sample
(``llava_packed_sdpa``): sum of s^2 over the samples. ``packed+mask`` (only with ``--modes``): the same
rows through one dense block-diagonal mask per row, 2048^2 cells however its samples split it (flash
varlen and flex on a GPU skip those blocks too). Attention / linear FLOPs per token at s = 2048:
2s/(9h) = 1.78 for this shape (h 256, 2 layers, MLP 2h, 2 of 4 KV heads) vs ~s/(6h) = 0.08 for a 7B
(h 4096, MLP 11008): the tiny model is attention-bound, which is why the dense-mask path loses here;
the tables give each mode's computed cells and ``--profile`` torch.profiler's top ops. At 576 image
tokens an image sample takes >= ~630 positions, so a 2048 row mostly holds two: ~8% of packed rows
stay empty whatever the packer (the last table's samples/row).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling length model, run as a script
from mix665k import (  # noqa: E402
    CAPACITY,
    MIXTURE,
    SYSTEM_TOKENS,
    TURN_ANSWER_TOKENS,
    TURN_PROMPT_TOKENS,
    draw_samples,
    llm_length,
)
from packing_report import (  # noqa: E402
    LAYOUTS,
    full_scale_table,
    mixture_table,
    ratio_rows,
    ratio_table,
    results_table,
)

MODES = ("padded", "packed", "packed+groups", "packed+mask")
PER_SAMPLE = ("packed", "packed+groups")  # attention once per sample: sum of s^2 cells, not rows x L^2


# ---- schedules (what the trainer would feed one device) ----

def padded_steps(samples: list[dict[str, Any]], batch: int, world: int, seed: int) -> list[list[list[int]]]:
    """Steps of rows (one sample per row) in ``--group_by_modality_length`` order."""
    import torch

    from llava.data.sampler import get_modality_length_grouped_indices

    signed = [s["words"] if s["image"] else -s["words"] for s in samples]
    order = get_modality_length_grouped_indices(signed, batch, world, torch.Generator().manual_seed(seed))
    return [[[i] for i in order[k:k + batch]] for k in range(0, len(order), batch)]


def packed_steps(samples: list[dict[str, Any]], image_tokens: int, rows: int, world: int, seed: int,
                 groups: bool, buffer: int) -> list[list[list[int]]]:
    """Steps of ``rows`` packs, packed and ordered as ``packed_data_module`` + the Trainer's sampler do."""
    import torch

    from llava.data.packing import first_fit_decreasing
    from llava.data.sampler import get_modality_length_grouped_indices

    lengths = [llm_length(s, image_tokens) for s in samples]
    modality = [int(s["image"]) for s in samples] if groups else None  # 1 = image, 0 = text-only
    packs = first_fit_decreasing(lengths, CAPACITY, seed, buffer, modality)
    gen = torch.Generator().manual_seed(seed)
    if groups:  # PackedDataset.modality_lengths: pack length, positive when the pack has an image
        signed = [sum(lengths[i] for i in p) * (1 if any(samples[i]["image"] for i in p) else -1) for p in packs]
        order = get_modality_length_grouped_indices(signed, rows, world, gen)
    else:
        order = torch.randperm(len(packs), generator=gen).tolist()
    ordered = [packs[i] for i in order]
    return [ordered[k:k + rows] for k in range(0, len(ordered), rows)]


def schedule_stats(steps: list[list[list[int]]], lengths: list[int], one_row: bool = False) -> dict[str, float]:
    """Real and processed positions, waste and dense attention cells of a schedule (no model).

    ``one_row``: each step's packs end to end in one row (``PackedCollator(one_row=True)``).
    """
    real = processed = cells = useful_cells = 0
    for step in steps:
        if one_row:
            step = [[i for row in step for i in row]]
        width = max(sum(lengths[i] for i in row) for row in step)
        processed += len(step) * width
        cells += len(step) * width * width
        real += sum(lengths[i] for row in step for i in row)
        useful_cells += sum(lengths[i] ** 2 for row in step for i in row)
    return dict(real=real, processed=processed, waste=1 - real / processed, cells=cells, useful_cells=useful_cells,
                rows=sum(len(step) for step in steps))


def schedule(mode: str, samples: list[dict[str, Any]], image_tokens: int, world: int,
             args: argparse.Namespace) -> tuple[list[list[list[int]]], list[int]]:
    """(steps, LLM lengths) of ``mode`` for ``samples``; packed rows per step from ``args`` or the mean length."""
    lengths = [llm_length(s, image_tokens) for s in samples]
    if mode == "padded":
        return padded_steps(samples, args.batch, world, args.seed), lengths
    rows = args.packed_rows or max(1, round(args.batch * float(np.mean(lengths)) / CAPACITY))
    return packed_steps(samples, image_tokens, rows, world, args.seed, mode == "packed+groups", args.buffer), lengths


# ---- the worker: one mode in its own process ----

def make_item(sample: dict[str, Any], seed: int, vocab: int, image_size: int) -> dict[str, Any]:
    """Random token ids shaped like ``sample``: labels on the answers, -100 elsewhere; an image if it has one."""
    import torch

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (sample["text"],), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    at = SYSTEM_TOKENS
    for q, a in sample["turns"]:
        at += q + TURN_PROMPT_TOKENS
        labels[at:at + a + TURN_ANSWER_TOKENS] = ids[at:at + a + TURN_ANSWER_TOKENS]
        at += a + TURN_ANSWER_TOKENS
    item = dict(input_ids=ids, labels=labels)
    if sample["image"]:
        placeholder = torch.tensor([IMAGE_TOKEN_INDEX])
        item["input_ids"] = torch.cat([ids[:SYSTEM_TOKENS], placeholder, ids[SYSTEM_TOKENS:]])
        item["labels"] = torch.cat([labels[:SYSTEM_TOKENS], torch.tensor([IGNORE_INDEX]), labels[SYSTEM_TOKENS:]])
        item["image"] = torch.randn(3, image_size, image_size, generator=gen)
    return item


def _build(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(model, optimizer, collate) for the spec's mode."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from llava.data.dataset import DataCollatorForSupervisedDataset
    from llava.data.packing import PackedCollator
    from llava.model.packing import PACKED_SDPA
    from llava.testing.tiny_llava import build_tiny_llava

    hf_logging.set_verbosity_error()
    model = build_tiny_llava(spec["llm"], spec["clip"], **spec["flags"])
    # what train() runs: sdpa once per sample for packed rows (packed+mask: one dense L x L mask per row)
    model.set_attn_implementation(PACKED_SDPA if spec["mode"] in ("packed", "packed+groups") else "sdpa")
    model.train()
    tok = AutoTokenizer.from_pretrained(spec["llm"], use_fast=False)
    tok.model_max_length = CAPACITY
    padded = DataCollatorForSupervisedDataset(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5, weight_decay=0.0)
    if spec["mode"] == "padded":
        return model, opt, lambda rows: padded([item for row in rows for item in row])
    return model, opt, PackedCollator(padded.pad_token_id, one_row=spec["mode"] in PER_SAMPLE)  # as train() does


def run_worker(spec_path: str, out_path: str) -> None:
    """Train the spec's steps once, timing each; write times, processed shapes and peak RSS to ``out_path``."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model, opt, collate = _build(spec)
    shapes: list[tuple[int, int]] = []
    model.get_model().register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True)
    samples, vocab, size = spec["samples"], model.get_input_embeddings().num_embeddings, spec["image_size"]

    def batch(step: list[list[int]]) -> dict[str, Any]:
        return collate([[make_item(samples[i], spec["seed"] + i, vocab, size) for i in row] for row in step])

    def train_step(inputs: dict[str, Any]) -> None:
        with torch.profiler.record_function("forward"):
            loss = model(**inputs).loss
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    steps, tag = spec["steps"], f"[{spec['image_tokens']} tok / {spec['mode']}]"
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # model built, nothing trained yet
    for _ in range(spec["warmup"]):  # the first step once more: kernels and allocator warm for its shapes
        train_step(batch(steps[0]))
    shapes.clear()
    times, start = [], time.perf_counter()
    for k, step in enumerate(steps, start=1):
        inputs = batch(step)
        t0 = time.perf_counter()
        train_step(inputs)
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        print(f"{tag} step {k}/{len(steps)}  {elapsed:.0f}s elapsed  ETA {elapsed / k * (len(steps) - k):.0f}s",
              file=sys.stderr, flush=True)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = dict(times=times, shapes=shapes[:len(steps)], rss_start=rss_start / 1024, rss_peak=rss_peak / 1024)
    if spec["profile"]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for step in steps[:spec["profile"]]:
                train_step(batch(step))
        print(f"\n### torch.profiler, {tag}, {min(spec['profile'], len(steps))} steps (top ops by CPU time)\n")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18), flush=True)
    Path(out_path).write_text(json.dumps(result))


# ---- the driver ----

def attention_linear_ratio(hidden: int, intermediate: int, heads: int, kv_heads: int, seq: int) -> float:
    """Attention FLOPs (QK^T + AV, 4·s·h) over linear FLOPs (2 x projection + MLP weights) per token and layer."""
    kv = hidden * kv_heads // heads
    weights = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate
    return 4 * seq * hidden / (2 * weights)


def run_mode(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one mode in a subprocess (own peak RSS) and return its measurements."""
    name = f"{spec['image_tokens']}_{spec['mode'].replace('+', '_')}"
    spec_path, out_path = workdir / f"{name}.spec.json", workdir / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)]
    tag, tail = f"[{spec['image_tokens']} tok", collections.deque(maxlen=80)
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:  # live progress; library noise kept only for an error message
            tail.append(line)
            if line.startswith(tag):
                print(line, end="", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"mode {spec['mode']} at {spec['image_tokens']} image tokens failed:\n{''.join(tail)}")
    return json.loads(out_path.read_text())


def _spread(values: list[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    return dict(median=float(np.median(values)), low=float(min(values)), high=float(max(values)))


def measure(samples: list[dict[str, Any]], image_tokens: int, args: argparse.Namespace, paths: tuple[str, str],
            workdir: Path) -> list[dict[str, Any]]:
    """Every requested mode on the samples that fit 2048 at ``image_tokens``, ``--repeats`` times with the modes
    interleaved (drift hits every mode alike); one row per mode, times as the median and range of the repeats."""
    keep = [s for s in samples if llm_length(s, image_tokens) <= CAPACITY]
    flags = dict(compression_after_projection=True, final_spatial_size=image_tokens) if image_tokens != 576 else {}
    plans = {}
    for mode in args.modes:
        steps, lengths = schedule(mode, keep, image_tokens, args.world_size, args)
        plans[mode] = (steps, schedule_stats(steps, lengths, one_row=mode in PER_SAMPLE))
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    for rep in range(args.repeats):
        for mode in args.modes:
            steps, stats = plans[mode]
            spec = dict(mode=mode, image_tokens=image_tokens, llm=paths[0], clip=paths[1], flags=flags, samples=keep,
                        steps=steps, threads=args.threads, seed=args.seed, warmup=args.warmup, image_size=96,
                        profile=args.profile)
            print(f"[{image_tokens} tok / {mode}] repeat {rep + 1}/{args.repeats}: {len(keep)} samples "
                  f"({len(samples) - len(keep)} dropped: > {CAPACITY}), {len(steps)} steps", file=sys.stderr,
                  flush=True)
            res = run_mode(spec, workdir)
            processed = sum(b * w for b, w in res["shapes"])
            if processed != stats["processed"]:
                raise SystemExit(f"{mode}: the model processed {processed} positions, the schedule says "
                                 f"{stats['processed']}; the benchmark's length model is out of step with the code")
            runs[mode].append(res)
    out = []
    for mode, (steps, stats) in plans.items():
        res, seconds = runs[mode][0], [sum(r["times"]) for r in runs[mode]]
        stats["computed_cells"] = stats["useful_cells"] if mode in PER_SAMPLE else stats["cells"]
        peak, delta = [r["rss_peak"] for r in runs[mode]], [r["rss_peak"] - r["rss_start"] for r in runs[mode]]
        out.append(dict(stats, image_tokens=image_tokens, mode=mode, samples=len(keep), steps=len(steps),
                        dropped=len(samples) - len(keep), rows=sum(b for b, _ in res["shapes"]) / len(steps),
                        width=sum(w for _, w in res["shapes"]) / len(steps), seconds=float(np.median(seconds)),
                        repeat_seconds=seconds, tokens_per_s=stats["real"] / float(np.median(seconds)),
                        tokens_per_s_spread=_spread([stats["real"] / t for t in seconds]),
                        rss_peak=float(np.median(peak)), rss_delta=float(np.median(delta))))
    return out


def full_scale(pool: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Waste and samples per row of every mode on a large pool at world size 8 (analytic: no model runs)."""
    out = []
    for tokens in args.image_tokens:
        keep = [s for s in pool if llm_length(s, tokens) <= CAPACITY]
        row = dict(image_tokens=tokens, samples=len(keep), mean_length=float(np.mean([llm_length(s, tokens)
                                                                                       for s in keep])))
        for mode in LAYOUTS:
            stats = schedule_stats(*schedule(mode, keep, tokens, 8, args))
            row[mode], row[f"{mode} per row"] = stats["waste"], len(keep) / stats["rows"]
        out.append(row)
    return out


# ---- entry point ----

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with --quick / --steps / defaults resolved."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-tokens", type=int, nargs="+", choices=[576, 16], default=None,
                   help="image tokens per image (default: 576 16; --quick: 16)")
    p.add_argument("--samples", type=int, default=128, help="samples drawn from the mixture, trained once per mode")
    p.add_argument("--steps", type=int, default=None, help="size the sample set as STEPS padded steps (x --batch)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None, help="default: padded packed")
    p.add_argument("--batch", type=int, default=16, help="padded samples per device and step (upstream stage 2)")
    p.add_argument("--packed-rows", type=int, default=None, help="packed rows per step (default: same real tokens)")
    p.add_argument("--world-size", type=int, default=1, help="world size the samplers group for (see docstring)")
    p.add_argument("--buffer", type=int, default=None, help="--packing_buffer_size (default: the trainer's)")
    p.add_argument("--pool", type=int, default=20000, help="samples of the analytic full-scale waste table")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs of every mode, interleaved (median and range; default 3, 1 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per mode (the first step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s): 12 samples, 16 image tokens, h=64")
    p.add_argument("--profile", type=int, nargs="?", const=2, default=0, metavar="STEPS",
                   help="print a torch.profiler table of top ops per mode over STEPS (2) extra steps")
    p.add_argument("--json", default=None, help="also write everything to this JSON file")
    p.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # a smoke run: a smaller LLM too, so it says nothing about speed
        args.samples, args.pool, args.hidden = 12, 1000, 64
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.image_tokens = args.image_tokens or ([16] if args.quick else [576, 16])
    args.modes = args.modes or ["padded", "packed"]
    if "padded" not in args.modes:
        args.modes = ["padded", *args.modes]  # the ratios are to the padded path
    if args.steps is not None:
        args.samples = args.steps * args.batch
    if args.buffer is None:
        from llava.data.packing import DEFAULT_PACKING_BUFFER

        args.buffer = DEFAULT_PACKING_BUFFER
    return args


def main(argv: list[str] | None = None) -> None:
    """Build the tiny models, run every (image tokens, mode) in its own process, print the tables."""
    args = parse_args(argv)
    if args.worker:
        run_worker(*args.worker)
        return
    start = time.perf_counter()
    samples, pool = draw_samples(args.samples, args.seed), draw_samples(args.pool, args.seed + 1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
        from llava.testing.tiny_models import build_clip, build_llm

        paths = (build_llm(Path(tmp) / "llm", "llama", hidden=args.hidden, layers=args.layers, seed=args.seed),
                 build_clip(Path(tmp) / "clip", num_layers=2, hidden=32, image_size=96, patch_size=4, seed=args.seed))
        for tokens in args.image_tokens:
            rows += measure(samples, tokens, args, paths, Path(tmp))
    ratios, scale = ratio_rows(rows), full_scale(pool, args)
    ratio_attn = attention_linear_ratio(args.hidden, 2 * args.hidden, 4, 2, CAPACITY)
    ratio_7b = attention_linear_ratio(4096, 11008, 32, 32, CAPACITY)
    lines = ["# Packing benchmark: padded (--group_by_modality_length) vs packed (--packing), tiny LLaVA on CPU", "",
             f"LLM: Llama h={args.hidden}, {args.layers} layers, MLP {2 * args.hidden}, 4 heads / 2 KV heads, sdpa, "
             f"fp32; CLIP 2 layers h=32, 96 px / patch 4 = 24x24 = 576 patches (frozen). threads={args.threads}, "
             f"seed={args.seed}, padded batch {args.batch}, sampler world size {args.world_size}, "
             f"packing buffer {args.buffer}, capacity {CAPACITY}. Attention/linear FLOPs per token at s={CAPACITY}: "
             f"{ratio_attn:.2f} for this shape vs {ratio_7b:.3f} for a 7B. Packed rows: sdpa once per sample "
             f"(llava_packed_sdpa), as --packing trains.", "",
             "## Mixture modelled on llava_v1_5_mix665k", "",
             "Counts: arXiv 2310.03744 (LLaVA-1.5) Table 7; LLaVA-Instruct split as its files on "
             "huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K. Turns per sample and tokens per turn "
             "(log-normal median (sigma)) are this benchmark's assumptions; + 35 system, 8 per turn prompt-side and "
             "1 answer-end template tokens; image samples + the image tokens; samples > 2048 dropped in both modes.",
             "",
             *mixture_table(pool, samples), "",
             f"## Measured (same samples in every mode of a row group; median [range] of {args.repeats} run(s))", "",
             *results_table(rows), "",
             "## packed / padded ratios (same run)", "", *ratio_table(ratios), "",
             f"## Waste at full scale (analytic, pool of {args.pool}, sampler world size 8 x {args.batch}; one row "
             "per pack, as eager / flex / the dense mask get it: per-sample attention puts a batch's packs in "
             "one row, with no padding)", "",
             *full_scale_table(scale, args.pool), "",
             f"_waste = padding / processed LLM positions; useful tok/s = real (non-padding, image tokens included) "
             f"LLM positions per second of fwd+bwd+AdamW; limit = padded processed / real positions (the speedup if "
             f"time were proportional to processed positions); peak RSS = ru_maxrss of the mode's subprocess; the "
             f"issue's goals: packed waste <= 3%, tok/s >= 1.3x (576) and 1.8x (16). Total "
             f"{time.perf_counter() - start:.0f}s._"]
    print("\n".join(lines), flush=True)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "worker"}
        Path(args.json).write_text(json.dumps(dict(config=config, mixture=[s._asdict() for s in MIXTURE],
                                                   results=rows, ratios=ratios, full_scale=scale), indent=1))


if __name__ == "__main__":
    main()
