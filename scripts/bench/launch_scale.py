"""Benchmark (not a test): launch -> first optimizer step at LLaVA-665K scale, and peak RSS per rank.

Generates a synthetic LLaVA-format data file shaped like ``llava_v1_5_mix665k.json`` (``mix665k.draw_samples``:
the same mix of image / text-only / multi-turn samples and lengths, words from a small vocabulary; every image
sample names one of a pool of small PNGs, so the launch image check reads cached headers), deterministic for a
seed and kept in the work folder. Then times ``scripts/v1_5/finetune.sh`` (tiny random models, 2 CPU DeepSpeed
processes, ZeRO-3, ``--group_by_modality_length``, ``MAX_STEPS=1``) from the launch to the first
``[progress] ... step 1/`` line, polling every rank's peak RSS (``VmHWM``, which counts the pages of a memory-mapped
store the rank has read, shared by every process on the node) and its peak private memory (``RssAnon``), for each
configuration:

    json   / store            the data read by every rank from the JSON, or from the memory-mapped store
    padded / packed           ``--packing``
    cold   / warm             first launch (no store, no packing length cache) or a relaunch that reuses them

and upstream LLaVA's data launch in the same run: 2 processes that each ``json.load`` the file and compute the
word-count lengths (``upstream``; no model, so it is a lower bound of upstream's launch).

    python scripts/bench/launch_scale.py [--samples 665000] [--repeats 3] [--configs json-padded,store-packed]
        [--workdir /tmp/launch_scale] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "bench"))
VOCAB = ("the image shows a red blue green small large object left right top bottom near far what where how many "
         "colour shape answer question person car dog table").split()
STEP_ONE = re.compile(r"\[progress\] \S+ step 1/")
ALL_CONFIGS = ("upstream", "json-padded", "store-padded-cold", "store-padded-warm", "json-packed-cold",
               "json-packed-warm", "store-packed-cold", "store-packed-warm")


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(VOCAB[i] for i in rng.integers(0, len(VOCAB), max(1, n)))


def write_data(path: Path, n: int, seed: int, images: int) -> None:
    """The synthetic mix as LLaVA JSON, streamed; image samples cycle through ``images`` pool files."""
    from mix665k import draw_samples

    rng = np.random.default_rng(seed + 1)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[")
        for i, s in enumerate(draw_samples(n, seed)):
            tpw = 1.3
            conv = []
            for k, (q, a) in enumerate(s["turns"]):
                question = _words(rng, round(q / tpw))
                if k == 0 and s["image"]:
                    question = "<image>\n" + question
                conv += [{"from": "human", "value": question}, {"from": "gpt", "value": _words(rng, round(a / tpw))}]
            sample = {"id": f"{s['source']}-{i}", "conversations": conv}
            if s["image"]:
                sample["image"] = f"pool/{i % images}.png"
            f.write(("," if i else "") + json.dumps(sample))
        f.write("]")
    tmp.replace(path)


def prepare(workdir: Path, n: int, seed: int) -> dict[str, str]:
    """Tiny models, the stage-1 projector, the image pool and the data file (each made once per workdir)."""
    import torch
    from PIL import Image

    from llava.model.checkpoints import projector_tensors
    from llava.testing.tiny_llava import build_tiny_llava
    from llava.testing.tiny_models import build_clip, build_llm

    workdir.mkdir(parents=True, exist_ok=True)
    clip, llm, adapter = workdir / "clip", workdir / "llama", workdir / "mm_projector.bin"
    if not adapter.exists():
        build_clip(clip)
        build_llm(llm, "llama")
        model = build_tiny_llava(str(llm), str(clip))
        torch.save({k: v.detach().clone() for k, v in projector_tensors(model)}, adapter)
    pool = workdir / "images" / "pool"
    if not pool.is_dir():
        pool.mkdir(parents=True)
        for k in range(64):
            Image.new("RGB", (64, 48), (4 * k, 128, 255 - 4 * k)).save(pool / f"{k}.png")
    data = workdir / f"mix_{n}_{seed}.json"
    if not data.exists():
        print(f"[launch_scale] writing {n} samples to {data}", flush=True)
        write_data(data, n, seed, 64)
    return dict(MODEL_NAME=str(llm), VISION_TOWER=str(clip), PRETRAIN_MM_MLP_ADAPTER=str(adapter),
                IMAGE_FOLDER=str(workdir / "images"), DATA_PATH=str(data))


def _peak_rss(pids: set[int], peaks: dict[int, int], anon: dict[int, int] | None = None) -> None:
    """Each process's peak RSS (``VmHWM``: file pages of a memory map count too) and, in ``anon``, the largest
    private memory seen (``RssAnon``: what the process does not share with the page cache)."""
    for pid in list(pids):
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]) * 1024)
                    elif line.startswith("RssAnon:") and anon is not None:
                        anon[pid] = max(anon.get(pid, 0), int(line.split()[1]) * 1024)
        except OSError:
            pids.discard(pid)


def _ranks(root: int) -> set[int]:
    """The training processes (train_mem.py) under ``root``."""
    import psutil

    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for c in children:
        try:
            if any(part.endswith("train_mem.py") for part in c.cmdline()):
                found.add(c.pid)
        except psutil.Error:
            continue
    return found


def time_launch(env: dict[str, str], log: Path, timeout_s: float = 3600) -> tuple[float, float, float]:
    """(seconds to the first step, peak RSS and peak private memory of the largest rank, bytes) of one
    finetune.sh launch."""
    import threading

    start = time.monotonic()
    # samples over 2048 tokens (ShareGPT's long turns in the tiny tokenizer) are skipped on every path alike
    cmd = ["bash", str(REPO / "scripts" / "v1_5" / "finetune.sh"), "--skip_bad_samples", "True"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first: list[float] = []

    def read() -> None:  # the log, and the moment step 1 is printed
        with log.open("w") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()  # the log can be followed while the launch runs
                if not first and STEP_ONE.search(line):
                    first.append(time.monotonic() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pids: set[int] = set()
    peaks: dict[int, int] = {}
    anon: dict[int, int] = {}
    while proc.poll() is None and time.monotonic() - start < timeout_s:
        pids |= _ranks(proc.pid)
        _peak_rss(pids, peaks, anon)
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    reader.join(timeout=30)
    if proc.wait() != 0 or not first:
        raise RuntimeError(f"finetune.sh failed or never reached step 1 (exit {proc.returncode}); see {log}")
    return first[0], float(max(peaks.values(), default=0)), float(max(anon.values(), default=0))


UPSTREAM = """
import json, sys, time
t = time.monotonic()
data = json.load(open(sys.argv[1]))
lengths = [sum(len(c["value"].split()) for c in s["conversations"]) + (128 if "image" in s else 0) for s in data]
modality = [(1 if "image" in s else -1) * max(1, sum(len(c["value"].split()) for c in s["conversations"]))
            for s in data]
print(time.monotonic() - t)
"""


def time_upstream(data: str) -> tuple[float, float, float]:
    """Upstream's data launch: 2 processes, each ``json.load`` + word-count lengths (wall s, peak RSS and private
    memory, bytes)."""
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", UPSTREAM, data], stdout=subprocess.PIPE) for _ in range(2)]
    peaks: dict[int, int] = {}
    anon: dict[int, int] = {}
    pids = {p.pid for p in procs}
    while any(p.poll() is None for p in procs):
        _peak_rss(set(pids), peaks, anon)
        time.sleep(0.1)
    if any(p.returncode for p in procs):
        raise RuntimeError("the upstream json.load path failed")
    return time.monotonic() - start, float(max(peaks.values(), default=0)), float(max(anon.values(), default=0))


def run_config(name: str, base: dict[str, str], workdir: Path, repeat: int) -> tuple[float, float, float]:
    """One measurement of configuration ``name`` (cold ones start from empty output and store folders)."""
    if name == "upstream":
        return time_upstream(base["DATA_PATH"])
    source, mode, *cache = name.split("-")
    out, store = workdir / "runs" / name.replace("-warm", "-cold"), workdir / "stores" / name.replace("-warm", "-cold")
    if not cache or cache[0] == "cold":
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("checkpoint-*"):
        shutil.rmtree(stale)
    env = dict(os.environ, **base, DEVICE="cpu", NUM_GPUS="2", MAX_STEPS="1", SAVE_STEPS="1000000", BATCH_SIZE="4",
               LOGGING_STEPS="1", NUM_WORKERS="0", REPORT_TO="none", OUTPUT_DIR=str(out), MODEL_MAX_LENGTH="2048",
               PACKING=str(mode == "packed"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if source == "store":
        env["DATA_STORE_DIR"] = str(store)
    return time_launch(env, workdir / "logs" / f"{name}.{repeat}.log")


def main(argv: list[str] | None = None) -> None:
    """Measure every configuration ``--repeats`` times (interleaved) and print a table of medians [range]."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=665_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", default=",".join(ALL_CONFIGS))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/launch_scale"))
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(ALL_CONFIGS))
    if unknown:
        p.error(f"--configs: unknown {unknown}; valid: {', '.join(ALL_CONFIGS)}")
    base = prepare(a.workdir, a.samples, a.seed)
    (a.workdir / "logs").mkdir(exist_ok=True)
    results: dict[str, list[tuple[float, float, float]]] = {c: [] for c in configs}
    for r in range(a.repeats):
        for c in configs:  # interleaved, so drift in machine load spreads over every configuration
            seconds, rss, private = run_config(c, base, a.workdir, r)
            results[c].append((seconds, rss, private))
            print(f"[launch_scale] repeat {r + 1}/{a.repeats} {c}: {seconds:.1f} s, peak RSS {rss / 2**30:.2f} GiB "
                  f"(private {private / 2**30:.2f} GiB)", flush=True)
    print(f"\n{a.samples} samples, 2 ranks, n={a.repeats} each: median [min, max]\n")
    print("| configuration | launch -> step 1 (s) | peak RSS per rank (GiB) | peak private memory per rank (GiB) |\n"
          "|---|---|---|---|")
    for c, rows in results.items():
        cells = []
        for k, scale in ((0, 1.0), (1, 2**30), (2, 2**30)):
            v = [row[k] / scale for row in rows]
            digits = 1 if k == 0 else 2
            cells.append(f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}, {max(v):.{digits}f}]")
        print(f"| {c} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps(dict(samples=a.samples, repeats=a.repeats, results=results), indent=1))


if __name__ == "__main__":
    main()
