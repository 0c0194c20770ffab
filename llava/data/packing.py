"""Data side of ``--packing True``: whole samples packed into rows of at most ``model_max_length`` tokens.

* **Lengths** (:func:`sample_lengths`): every sample's tokens before the image splice and its image
  count, from tokenization alone (images are never opened), cached in a JSON file keyed by the data
  file's SHA-256 and the tokenizer/template settings (``--packing_length_cache``, default
  ``<output_dir>/packing_lengths.json``; rank 0 computes it over worker processes,
  :mod:`llava.data.token_count`, the other ranks read it). The length
  of a sample in the LLM sequence is ``tokens + images * (tokens_per_image - 1)``, with the add-on
  registry's tokens per image (compression, interleave, registers ...).
* **Packs** (:func:`first_fit_decreasing`): the samples in a seeded random order, cut into buffers of
  ``--packing_buffer_size``; inside each buffer first-fit-decreasing into bins of ``model_max_length``
  (with ``--group_by_modality_length`` image and text-only samples are packed apart). The packs are
  fixed for the run (same seed, same data: same packs, so a resumed run sees the same packs); the
  Trainer's sampler shuffles their order every epoch. A pack is one batch element: a step takes
  ``per_device_train_batch_size`` packs per device.
* **Rows** (:class:`PackedCollator`): a pack's samples concatenated, ``packed_seq_ids`` marking them
  (:mod:`llava.model.packing` does the rest in the model), each sample's first label ignored, rows
  right-padded to the longest row of the batch; when attention runs per sample (varlen flash-attn,
  ``llava_packed_sdpa``) the batch's packs go into one row instead, so nothing is padded.

Bad samples: structural problems and samples longer than a row are known before training (without
``--skip_bad_samples`` the run stops with one line; with it they are left out and counted); a sample
that turns out bad when fetched (e.g. a missing image) is dropped from its pack and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.preprocess import BadSampleError
from llava.data.store import file_sha256
from llava.data.token_count import count_tokens
from llava.utils.atomic import atomic_write_json
from llava.utils.user_errors import fail

logger = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 2: the counts carry their SHA-256 (counts_sha256)
CACHE_FILE = "packing_lengths.json"
DEFAULT_PACKING_BUFFER = 10000  # samples shuffled and packed together (--packing_buffer_size 0)


# ---- lengths ----

def cache_key(dataset: Any) -> dict[str, Any]:
    """What the token counts depend on: the data file, the tokenizer and the prompt template."""
    tok = dataset.tokenizer
    sha = getattr(dataset.list_data_dict, "sha256", None) or file_sha256(dataset.data_path)  # a store knows it
    return dict(format=CACHE_FORMAT, data_sha256=sha, samples=len(dataset),
                tokenizer=f"{type(tok).__name__}:{getattr(tok, 'name_or_path', '')}:{len(tok)}",
                template=hashlib.sha256(repr(dataset.conv).encode()).hexdigest(),
                mm_use_im_start_end=bool(dataset.mm_use_im_start_end))


def counts_digest(tokens: Sequence[int], images: Sequence[int]) -> str:
    """SHA-256 of the per-sample counts: a cache whose counts were edited by hand no longer matches it."""
    return hashlib.sha256(json.dumps([list(tokens), list(images)], separators=(",", ":")).encode()).hexdigest()


def read_cached_lengths(cache_path: str, key: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """The counts in ``cache_path`` when it is whole, made for ``key`` and its counts match their digest; a
    cache that is empty, truncated, not JSON or edited is warned about (None: count again)."""
    try:
        with open(cache_path, encoding="utf-8") as f:
            cached = json.load(f)
        if isinstance(cached, dict) and cached.get("key") != key:
            logger.info("packing: %s was made for other data or settings; counting again", cache_path)
            return None
        tokens, images, digest = list(cached["tokens"]), list(cached["images"]), cached["counts_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("packing: the length cache %s is unreadable (%s: %s); counting again", cache_path,
                       type(err).__name__, err)
        return None
    if len(tokens) != key["samples"] or len(images) != key["samples"] or counts_digest(tokens, images) != digest:
        logger.warning("packing: the counts in %s do not match their digest (edited or damaged); counting again",
                       cache_path)
        return None
    return tokens, images


def sample_lengths(dataset: Any, cache_path: str | None) -> tuple[list[int], list[int]]:
    """(tokens, images) per sample, read from ``cache_path`` when it is sound and its key matches, else counted
    (and written with the data file's SHA-256 and a digest of the counts)."""
    key = cache_key(dataset)
    if cache_path and os.path.isfile(cache_path):
        cached = read_cached_lengths(cache_path, key)
        if cached is not None:
            return cached
    tokens, images = count_tokens(dataset)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        atomic_write_json(cache_path, dict(key=key, tokens=tokens, images=images,
                                           counts_sha256=counts_digest(tokens, images)), indent=None)
    return tokens, images


def sequence_lengths(tokens: Sequence[int], images: Sequence[int], tokens_per_image: int) -> list[int]:
    """Positions each sample takes in the LLM sequence (-1 stays -1: a bad sample)."""
    return [t if t < 0 else t + k * (tokens_per_image - 1) for t, k in zip(tokens, images)]


# ---- packs ----

def _ffd(items: list[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing of ``items`` (indices) into bins of ``capacity``; ties keep their order."""
    ordered = sorted(items, key=lambda i: -lengths[i])  # stable
    room = np.empty(len(ordered), dtype=np.int64)
    bins: list[list[int]] = []
    for i in ordered:
        fits = np.flatnonzero(room[:len(bins)] >= lengths[i])
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            room[b] = capacity
        bins[b].append(i)
        room[b] -= lengths[i]
    return bins


def first_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int, buffer_size: int,
                         groups: Sequence[int] | None = None) -> list[list[int]]:
    """Packs (lists of sample indices) of total length <= ``capacity``; deterministic for ``seed``.

    Samples with a negative length are left out. ``groups``: samples of different groups never share
    a pack (modality grouping). Every other sample is in exactly one pack.
    """
    if capacity < 1 or buffer_size < 1:
        raise ValueError(f"capacity ({capacity}) and buffer_size ({buffer_size}) must be positive")
    if any(length > capacity for length in lengths):
        raise ValueError("every length must fit the capacity; leave out (negative length) the longer samples")
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    packs: list[list[int]] = []
    for start in range(0, len(order), buffer_size):
        chunk = [i for i in order[start:start + buffer_size] if lengths[i] >= 0]
        for g in sorted({groups[i] for i in chunk} if groups is not None else {0}):
            members = [i for i in chunk if groups is None or groups[i] == g]
            packs.extend(_ffd(members, lengths, capacity))
    return packs


def exclude_bad(dataset: Any, lengths: list[int], capacity: int, skip: bool) -> list[int]:
    """Lengths with bad samples (unrenderable, or longer than a row) set to -1 and counted as skipped (``skip``),
    else :class:`BadSampleError` for the first one."""
    out = list(lengths)
    for i, length in enumerate(lengths):
        if 0 <= length <= capacity:
            continue
        if length < 0:
            try:
                dataset.token_count(i)
            except BadSampleError as err:
                if not skip:
                    raise
                dataset.mark_bad(i, err.category)
        else:
            if not skip:
                sample = dataset.list_data_dict[i]
                sid = sample.get("id", f"#{i}") if isinstance(sample, dict) else f"#{i}"
                raise BadSampleError("too_long", f"{length} tokens (images included) exceed model_max_length="
                                     f"{capacity}; raise --model_max_length or shorten it").located(
                                         sid, dataset.data_path, i)
            dataset.mark_bad(i, "too_long")
        out[i] = -1
    return out


# ---- dataset and collator ----

class PackedDataset(Dataset):
    """Pack ``k`` of a :class:`~llava.data.dataset.LazySupervisedDataset`: the list of its samples' items."""

    def __init__(self, inner: Any, packs: list[list[int]], lengths: Sequence[int]) -> None:
        self.inner = inner
        self.packs = packs
        self.pack_lengths = [sum(lengths[i] for i in p) for p in packs]
        has_image = [any(self._has_image(i) for i in p) for p in packs]
        self._modality = [n if img else -n for n, img in zip(self.pack_lengths, has_image)]

    def _has_image(self, i: int) -> bool:
        sample = self.inner.list_data_dict[i]
        return isinstance(sample, dict) and sample.get("image") is not None

    def __len__(self) -> int:
        return len(self.packs)

    @property
    def lengths(self) -> list[int]:
        return list(self.pack_lengths)

    @property
    def modality_lengths(self) -> list[int]:
        """Pack lengths, positive for packs with an image (the modality-grouped sampler's convention)."""
        return list(self._modality)

    def __getitem__(self, k: int) -> list[dict[str, torch.Tensor]]:
        items = [item for i in self.packs[k] if (item := self.inner.get_or_none(i)) is not None]
        return items or [self.inner[self.packs[k][0]]]  # every sample bad: the next good one, alone

    # the skip bookkeeping lives in the samples' dataset
    def sync_across_ranks(self) -> None:
        self.inner.sync_across_ranks()

    def status_record(self) -> list[dict[str, Any]]:
        return self.inner.status_record()

    def restore_status(self, record: Any) -> None:
        self.inner.restore_status(record)

    def fetch_failure(self) -> Any:
        return self.inner.fetch_failure()

    def skip_report(self) -> str:
        return self.inner.skip_report()


class PackedCollator:
    """A batch of packs -> rows: ``input_ids``, ``labels``, ``attention_mask``, ``packed_seq_ids``, ``images``.

    ``one_row``: the batch's packs go end to end into a single row (no padding at all), for attention
    that runs per sample (varlen flash-attn, ``llava_packed_sdpa``), where a longer row costs nothing
    extra; otherwise one row per pack, right-padded to the longest. ``unpacked``: the collator for a
    batch of single samples (validation batches are never packed), used when the items are samples.
    """

    def __init__(self, pad_token_id: int, one_row: bool = False, unpacked: Any = None) -> None:
        self.pad_token_id = int(pad_token_id)
        self.one_row = one_row
        self.unpacked = unpacked

    def __call__(self, packs: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not packs:
            raise ValueError("PackedCollator got an empty batch")
        if isinstance(packs[0], dict):  # samples, not packs: a validation batch
            if self.unpacked is None:
                raise ValueError("PackedCollator got single samples but has no collator for them (unpacked=)")
            return self.unpacked(packs)
        if self.one_row:
            packs = [[item for pack in packs for item in pack]]
        width = max(sum(item["input_ids"].numel() for item in pack) for pack in packs)
        rows = len(packs)
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
        segments = torch.zeros((rows, width), dtype=torch.long)
        images = []
        for r, pack in enumerate(packs):
            at = 0
            for k, item in enumerate(pack, start=1):
                x, y = item["input_ids"], item["labels"]
                n = x.numel()
                input_ids[r, at:at + n], labels[r, at:at + n], segments[r, at:at + n] = x, y, k
                labels[r, at] = IGNORE_INDEX  # never the target of the previous sample's last token
                at += n
                if item.get("image") is not None:
                    images.append(item["image"])
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=segments > 0, packed_seq_ids=segments)
        n_placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if n_placeholders != len(images):
            raise ValueError(f"a packed batch has {n_placeholders} <image> placeholders but {len(images)} images")
        if images:
            batch["images"] = torch.stack(images, dim=0)
        return batch


def pack_dataset(dataset: Any, capacity: int, tokens_per_image: int, seed: int, buffer_size: int,
                 by_modality: bool, cache_path: str | None, main_process_first: Any) -> PackedDataset:
    """The packed view of ``dataset`` (lengths counted or read from the cache on rank 0 first)."""
    with main_process_first:
        tokens, images = sample_lengths(dataset, cache_path)
    lengths = exclude_bad(dataset, sequence_lengths(tokens, images, tokens_per_image), capacity,
                          dataset.skip_bad_samples)
    groups = [1 if k else 0 for k in images] if by_modality else None
    packs = first_fit_decreasing(lengths, capacity, seed, buffer_size, groups)
    packed = PackedDataset(dataset, packs, lengths)
    used = sum(packed.pack_lengths)
    logger.info("packing: %d samples in %d packs of <= %d tokens (%.1f%% full)", sum(map(len, packs)), len(packs),
                capacity, 100.0 * used / max(1, len(packs) * capacity))
    return packed


def packed_data_module(data_module: dict[str, Any], data_args: Any, training_args: Any,
                       one_row: bool = False) -> dict[str, Any]:
    """``data_module`` with its training set packed and the packing collator; a bad sample is a one-line exit.

    ``one_row``: each batch's packs in a single row (:class:`PackedCollator`).
    """
    dataset = data_module["train_dataset"]
    cache = data_args.packing_length_cache or os.path.join(training_args.output_dir, CACHE_FILE)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    try:
        packed = pack_dataset(
            dataset, capacity=dataset.tokenizer.model_max_length, tokens_per_image=data_args.num_image_tokens or 1,
            seed=seed, buffer_size=data_args.packing_buffer_size or DEFAULT_PACKING_BUFFER,
            by_modality=bool(training_args.group_by_modality_length), cache_path=cache,
            main_process_first=training_args.main_process_first(local=False, desc="packing lengths"))
    except BadSampleError as err:
        fail(str(err))  # its message already names --skip_bad_samples
    plain = data_module["data_collator"]
    return dict(data_module, train_dataset=packed,
                data_collator=PackedCollator(plain.pad_token_id, one_row=one_row, unpacked=plain))
