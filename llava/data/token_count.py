"""Token counts of every sample for packing, spread over worker processes.

Each worker is a forked copy of the process (the dataset, its tokenizer and template inherited, nothing pickled)
that runs the dataset's own :meth:`~llava.data.dataset.LazySupervisedDataset.token_count` over one contiguous
slice of the indices, so the counts are exactly what preprocessing produces for training whatever the number of
workers. The parent gathers the slices in order and prints one progress line (done/total, rate, ETA) at most every
``report_every_s`` seconds. A worker that dies (killed, out of memory) stops the count with an error naming it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import traceback
from typing import Any

from llava.data.preprocess import BadSampleError
from llava.utils.progress_line import ProgressLine

PROGRESS_EVERY = 500  # samples between a worker's progress messages
MIN_PER_WORKER = 2000  # below this many samples per worker, forking costs more than it saves


def default_workers(n: int) -> int:
    """Workers for ``n`` samples: every CPU this process may run on, but at least ``MIN_PER_WORKER`` samples each."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, n // MIN_PER_WORKER))


def _count(dataset: Any, i: int) -> tuple[int, int]:
    try:
        return dataset.token_count(i)
    except BadSampleError:
        return -1, 0  # exclude_bad says why, or stops the run


def _count_slice(dataset: Any, lo: int, hi: int, out: Any) -> None:
    """Worker: counts of samples ``lo..hi-1`` put on ``out`` as ``("done", lo, (tokens, images))``."""
    try:
        tokens, images = [], []
        for i in range(lo, hi):
            t, k = _count(dataset, i)
            tokens.append(t)
            images.append(k)
            if (i - lo + 1) % PROGRESS_EVERY == 0:
                out.put(("progress", lo, PROGRESS_EVERY))
        out.put(("done", lo, (tokens, images)))
    except Exception:  # noqa: BLE001 - any failure is sent to the parent, which raises it
        out.put(("error", lo, traceback.format_exc()))


def count_tokens(dataset: Any, workers: int | None = None, report_every_s: float = 30.0) -> tuple[list[int], list[int]]:
    """(tokens, images) per sample (-1 tokens for a structurally bad sample), over ``workers`` processes
    (default :func:`default_workers`; 1 counts in this process)."""
    n = len(dataset)
    workers = max(1, min(default_workers(n) if workers is None else workers, n))
    progress = ProgressLine("[packing] counting tokens", n, report_every_s)
    if workers == 1:
        tokens, images = [], []
        for i in range(n):
            t, k = _count(dataset, i)
            tokens.append(t)
            images.append(k)
            progress.add(1)
        return tokens, images
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    bounds = [n * w // workers for w in range(workers + 1)]
    procs = {lo: ctx.Process(target=_count_slice, args=(dataset, lo, hi, out), daemon=True)
             for lo, hi in zip(bounds, bounds[1:])}
    for p in procs.values():
        p.start()
    parts: dict[int, tuple[list[int], list[int]]] = {}
    try:
        while len(parts) < workers:
            try:
                kind, lo, payload = out.get(timeout=5.0)
            except queue_mod.Empty:
                dead = [lo for lo, p in procs.items() if lo not in parts and p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"token counting: the worker for samples from index {dead[0]} died "
                                       f"(exit code {procs[dead[0]].exitcode})") from None
                continue
            if kind == "progress":
                progress.add(payload)
            elif kind == "done":
                parts[lo] = payload
            else:
                raise RuntimeError(f"token counting failed in the worker for samples from index {lo}:\n{payload}")
    finally:
        for p in procs.values():
            if p.is_alive() and len(parts) < workers:
                p.terminate()
            p.join()
    tokens = [t for lo in bounds[:-1] for t in parts[lo][0]]
    images = [k for lo in bounds[:-1] for k in parts[lo][1]]
    return tokens, images
