"""Lazy supervised dataset over LLaVA-format JSON, its collator, and bad-data handling.

Data file: a JSON list (or JSON Lines) of ``{"id", "image" (optional, relative to image_folder),
"conversations": [{"from": "human"|"gpt", "value": str}, ...]}``.

``data_args`` is read by attribute (``llava.train.arguments.DataArguments`` fits): ``data_path``,
``image_folder``, ``image_aspect_ratio`` (``square``/``pad``), ``is_multimodal``,
``skip_bad_samples``, and the fields ``train()`` fills in: ``image_processor``,
``mm_use_im_start_end``, ``conv_version`` (template name) and ``num_image_tokens`` (tokens one
image occupies in the LLM sequence; ``None`` counts the placeholder as one token).
``lazy_preprocess`` is accepted and ignored: preprocessing is always lazy.

Bad samples (missing/unreadable/truncated image, ``image`` key without ``<image>``, broken
conversation, longer than ``tokenizer.model_max_length``) raise :class:`BadSampleError` naming the
sample id and data file. With ``skip_bad_samples`` the next good sample is returned instead, each
bad sample is counted once by category (in shared memory, so DataLoader workers count too), and
:meth:`LazySupervisedDataset.skip_report` summarises them. A malformed data file raises
:class:`DataFileError` with the line and column.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.data.preprocess import (
    BAD_SAMPLE_CATEGORIES,
    BadSampleError,
    preprocess,
    preprocess_multimodal,
    prompt_token_ids,
)
from llava.data.sample_check import structural_problems
from llava.mm_utils import background_color_for, image_to_tensor, load_image
from llava.utils.image_files import image_inside_folder

__all__ = [
    "BadSampleError",
    "DataCollatorForSupervisedDataset",
    "DataFileError",
    "LazySupervisedDataset",
    "load_data_file",
]

logger = logging.getLogger(__name__)

IMAGE_LENGTH_BONUS = 128  # upstream's fixed length credit for an image in `lengths`
_MISMATCH_CODE = len(BAD_SAMPLE_CATEGORIES) + 1  # flag for "kept but fully masked" samples


class DataFileError(ValueError):
    """The data file itself is unusable (missing, not JSON, not a list)."""


def load_data_file(data_path: str) -> list[Any]:
    """Read a LLaVA-format JSON list (or ``.jsonl``) file, with line/column on syntax errors."""
    if not data_path or not os.path.isfile(data_path):
        raise DataFileError(
            f"data file not found: {data_path!r}; pass an existing LLaVA-format JSON via --data_path"
        )
    try:
        return _parse_data_file(data_path)
    except UnicodeDecodeError as err:
        raise DataFileError(
            f"{data_path} is not UTF-8 text: byte {err.object[err.start:err.start + 1]!r} at offset {err.start} "
            "does not decode; re-encode the file as UTF-8 (iconv -f <its encoding> -t utf-8)"
        ) from None


def _parse_data_file(data_path: str) -> list[Any]:
    with open(data_path, encoding="utf-8") as f:
        if data_path.endswith(".jsonl"):
            records = []
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataFileError(
                        f"malformed JSON Lines in {data_path} at line {lineno} column {err.colno}: "
                        f"{err.msg}. Fix that line of --data_path."
                    ) from None
            return records
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise DataFileError(
                f"malformed JSON in {data_path} at line {err.lineno} column {err.colno}: {err.msg}. "
                "Fix the file (python -m json.tool shows the spot) or pass another --data_path."
            ) from None
    if not isinstance(records, list):
        raise DataFileError(f"{data_path} must hold a JSON list of samples, found a {type(records).__name__}")
    return records


def _word_count(sample: Any) -> int:
    convs = sample.get("conversations") if isinstance(sample, dict) else None
    if not isinstance(convs, list):
        return 0
    return sum(
        len(c["value"].split()) for c in convs if isinstance(c, dict) and isinstance(c.get("value"), str)
    )


def problem_code(sample: Any) -> int:
    """0 for a sample training can use, else 1 + the index in ``BAD_SAMPLE_CATEGORIES`` of its first structural
    problem (the dataset's status code, and the data store's ``problem`` column)."""
    problems = structural_problems(sample)
    return BAD_SAMPLE_CATEGORIES.index(problems[0][0]) + 1 if problems else 0


def _has_image(sample: Any) -> bool:
    return isinstance(sample, dict) and sample.get("image") is not None


class LazySupervisedDataset(Dataset):
    """Tokenizes and loads each sample when it is fetched (upstream's ``LazySupervisedDataset``).

    Items: ``dict(input_ids=LongTensor[L], labels=LongTensor[L])`` plus ``image=FloatTensor[3,H,W]``
    for samples with an image. Text-only samples carry no image (no dummy): the collator stacks
    only real images.
    """

    def __init__(
        self, data_path: str, tokenizer: Any, data_args: Any, list_data_dict: Sequence[Any] | None = None
    ) -> None:
        super().__init__()
        self.data_path = data_path
        self.tokenizer = tokenizer
        self.data_args = data_args
        # a list is copied (the caller's stays its own); another Sequence (a memory-mapped store) is read in place
        self.list_data_dict = (
            load_data_file(data_path) if list_data_dict is None
            else list(list_data_dict) if isinstance(list_data_dict, list) else list_data_dict
        )
        self.conv = get_conv_template(getattr(data_args, "conv_version", None) or "vicuna_v1")
        self.image_folder = getattr(data_args, "image_folder", None)
        self.image_aspect_ratio = getattr(data_args, "image_aspect_ratio", "square")
        self.is_multimodal = bool(getattr(data_args, "is_multimodal", False))
        self.mm_use_im_start_end = bool(getattr(data_args, "mm_use_im_start_end", False))
        self.image_processor = getattr(data_args, "image_processor", None)
        self.num_image_tokens = getattr(data_args, "num_image_tokens", None)
        self.skip_bad_samples = bool(getattr(data_args, "skip_bad_samples", False))
        self.allow_absolute_image_paths = bool(getattr(data_args, "allow_absolute_image_paths", False))
        self.max_image_pixels = getattr(data_args, "max_image_pixels", None) or None
        has_image = getattr(self.list_data_dict, "has_image", None)  # a store's column, else every sample
        n_images = int(has_image.sum()) if has_image is not None else sum(_has_image(s) for s in self.list_data_dict)
        if n_images and not self.is_multimodal:
            raise ValueError(
                f"{data_path} has {n_images} samples with an 'image' but the model is text-only "
                "(data_args.is_multimodal is False): pass --vision_tower, or use text-only data"
            )
        if n_images and self.image_processor is None:
            raise ValueError("data_args.image_processor is not set; train() sets it from the vision tower")
        if n_images and self.image_folder is None:
            raise ValueError(
                f"{data_path} has {n_images} samples with an 'image' but --image_folder is not set"
            )
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            logger.warning(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some other code); truncated PNGs "
                "are still caught by verify(), other formats may load partially"
            )
        # Per-sample status shared with DataLoader workers: 0 = fine/unknown, k = BAD_SAMPLE_CATEGORIES[k-1].
        self._status = torch.zeros(len(self.list_data_dict), dtype=torch.int8).share_memory_()
        self._failed = torch.full((1,), -1, dtype=torch.int64).share_memory_()  # index of a fatal fetch failure
        codes = getattr(self.list_data_dict, "problem_codes", None)  # a store's column: the same codes
        if self.skip_bad_samples and codes is not None:
            self._status.copy_(torch.from_numpy(np.array(codes, dtype=np.int8)))  # a private copy
        elif self.skip_bad_samples:  # structural problems are known up front: skipped and counted exactly
            for i, sample in enumerate(self.list_data_dict):
                if code := problem_code(sample):
                    self._status[i] = code
        self._lengths: list[int] | None = None
        self._modality_lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.list_data_dict)

    @property
    def lengths(self) -> list[int]:
        """Whitespace word counts per sample, +128 for samples with an image (upstream)."""
        if self._lengths is None and hasattr(self.list_data_dict, "lengths"):
            self._lengths = self.list_data_dict.lengths()  # a store's columns: no sample decoded
        if self._lengths is None:
            self._lengths = [
                _word_count(s) + (IMAGE_LENGTH_BONUS if _has_image(s) else 0) for s in self.list_data_dict
            ]
        return self._lengths

    @property
    def modality_lengths(self) -> list[int]:
        """Word counts, positive for samples with an image, negative for text-only (never 0)."""
        if self._modality_lengths is None and hasattr(self.list_data_dict, "modality_lengths"):
            self._modality_lengths = self.list_data_dict.modality_lengths()
        if self._modality_lengths is None:
            self._modality_lengths = [
                max(_word_count(s), 1) * (1 if _has_image(s) else -1) for s in self.list_data_dict
            ]
        return self._modality_lengths

    # ---- loading ----

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not self.skip_bad_samples:
            return self._get(i)
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            if 0 < int(self._status[j]) < _MISMATCH_CODE:
                continue
            try:
                return self._get(j)
            except BadSampleError as err:
                self._status[j] = BAD_SAMPLE_CATEGORIES.index(err.category) + 1
                logger.warning("skipping bad sample (--skip_bad_samples): %s", err)
        raise RuntimeError(
            f"every sample in {self.data_path} is bad; see the warnings above\n{self.skip_report()}"
        )

    def _sample_id(self, i: int) -> Any:
        sample = self.list_data_dict[i]
        return sample.get("id", f"#{i}") if isinstance(sample, dict) else f"#{i}"

    def _get(self, i: int) -> dict[str, torch.Tensor]:
        sample, sample_id = self.list_data_dict[i], self._sample_id(i)
        try:
            return self._build(sample, sample_id, i)
        except BadSampleError as err:
            if not self.skip_bad_samples:
                self._failed[0] = i  # seen by the main process even when a DataLoader worker raised
            raise err.located(sample_id, self.data_path, i) from None

    def fetch_failure(self) -> BadSampleError | None:
        """The located error of the sample whose fetch stopped training (any worker), or None."""
        i = int(self._failed[0])
        if i < 0:
            return None
        try:
            self._build(self.list_data_dict[i], self._sample_id(i), i)
        except BadSampleError as err:
            return err.located(self._sample_id(i), self.data_path, i)
        return None

    def get_or_none(self, i: int) -> dict[str, torch.Tensor] | None:
        """Sample ``i`` itself, or None when it is bad and ``skip_bad_samples`` is on (counted; packing uses it)."""
        if not self.skip_bad_samples:
            return self._get(i)
        if 0 < int(self._status[i]) < _MISMATCH_CODE:
            return None
        try:
            return self._get(i)
        except BadSampleError as err:
            self._status[i] = BAD_SAMPLE_CATEGORIES.index(err.category) + 1
            logger.warning("skipping bad sample (--skip_bad_samples): %s", err)
            return None

    def token_count(self, i: int) -> tuple[int, int]:
        """(tokens before the image splice, images) of sample ``i`` without reading its image.

        Raises :class:`BadSampleError` (located) for a sample that cannot be rendered.
        """
        sample, sample_id = self.list_data_dict[i], self._sample_id(i)
        try:
            if problems := structural_problems(sample):
                raise BadSampleError(*problems[0])
            sources = [sample["conversations"]]
            if _has_image(sample):
                sources = preprocess_multimodal(sources, self.is_multimodal, self.mm_use_im_start_end)
            ids = prompt_token_ids(sources, self.tokenizer, self.conv, has_image=_has_image(sample),
                                   sample_id=sample_id)[0]
        except BadSampleError as err:
            raise err.located(sample_id, self.data_path, i) from None
        return len(ids), ids.count(IMAGE_TOKEN_INDEX)

    def precheck(self, i: int) -> None:
        """Everything about sample ``i`` that can be checked without reading its image: it renders, fits
        ``model_max_length`` and its image file is there. Raises :class:`BadSampleError` (located)."""
        n_tokens, n_images = self.token_count(i)
        sample = self.list_data_dict[i]
        try:
            self.check_length(n_tokens, n_images)
            if _has_image(sample):
                self._existing_image_path(sample["image"])
        except BadSampleError as err:
            raise err.located(self._sample_id(i), self.data_path, i) from None

    def mark_bad(self, i: int, category: str) -> None:
        """Record sample ``i`` as skipped for ``category`` (found before it was fetched, e.g. by packing)."""
        self._status[i] = BAD_SAMPLE_CATEGORIES.index(category) + 1

    def _build(self, sample: Any, sample_id: Any, i: int) -> dict[str, torch.Tensor]:
        problems = structural_problems(sample)  # the doctor's checks, same function
        if problems:
            raise BadSampleError(*problems[0])
        has_image = _has_image(sample)
        sources = [sample["conversations"]]
        image_path = None
        if has_image:
            sources = preprocess_multimodal(sources, self.is_multimodal, self.mm_use_im_start_end)
            image_path = self._existing_image_path(sample["image"])
        out = preprocess(sources, self.tokenizer, self.conv, has_image=has_image, sample_id=sample_id)
        input_ids, labels = out["input_ids"][0], out["labels"][0]
        if out.get("num_mismatched"):
            self._status[i] = _MISMATCH_CODE
        self._check_length(input_ids)
        item = dict(input_ids=input_ids, labels=labels)
        if image_path is not None:
            try:
                image = load_image(image_path, background_color_for(self.image_processor), self.max_image_pixels)
            except Image.DecompressionBombError as err:
                raise BadSampleError("image_too_large", f"{image_path}: {err}") from None
            except (OSError, SyntaxError, ValueError) as err:
                raise BadSampleError(
                    "unreadable_image", f"cannot read image {image_path}: {type(err).__name__}: {err}"
                ) from None
            item["image"] = image_to_tensor(image, self.image_processor, self.image_aspect_ratio)
        return item

    def _image_path(self, image: str) -> str:
        """``image`` under ``--image_folder``; absolute paths and ``..`` escapes are refused unless allowed."""
        path = os.path.join(self.image_folder, image)
        if self.allow_absolute_image_paths:
            return path
        if not image_inside_folder(image, self.image_folder):
            raise BadSampleError(
                "image_outside_folder",
                f"'image': {image!r} is not inside --image_folder {self.image_folder!r}; make it relative to "
                "the folder, or pass --allow_absolute_image_paths True to accept such paths",
            )
        return path

    def _existing_image_path(self, image: str) -> str:
        """:meth:`_image_path`, which must name an existing file (else ``missing_image``)."""
        path = self._image_path(image)
        if not os.path.isfile(path):
            raise BadSampleError("missing_image", f"image file not found: {path} (image_folder={self.image_folder!r})")
        return path

    def _check_length(self, input_ids: torch.Tensor) -> None:
        self.check_length(int(input_ids.numel()), int((input_ids == IMAGE_TOKEN_INDEX).sum()))

    def check_length(self, n_tokens: int, n_images: int) -> None:
        """Raise ``too_long`` when ``n_tokens`` (placeholders included) with ``n_images`` spliced in exceed
        ``model_max_length``."""
        max_len = getattr(self.tokenizer, "model_max_length", None)
        if max_len is None:
            return
        per_image = self.num_image_tokens if self.num_image_tokens is not None else 1
        total = n_tokens + n_images * (per_image - 1)
        if total > max_len:
            raise BadSampleError(
                "too_long",
                f"{total} tokens ({n_images} image(s) x {per_image} tokens included) "
                f"exceed model_max_length={max_len}; raise --model_max_length or shorten it",
            )

    # ---- reporting ----

    def sync_across_ranks(self) -> None:
        """Merge every rank's per-sample status into this one (a collective: call it on every rank).

        A sample is counted once however many ranks (or epochs) met it: statuses are combined by maximum.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        status = self._status.to(torch.int32)
        if dist.get_backend() == "nccl":
            status = status.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(status, op=dist.ReduceOp.MAX)
        self._status.copy_(status.cpu().to(torch.int8))

    def status_record(self) -> list[dict[str, Any]]:
        """Every sample skipped or fully masked so far, as ``{index, id, category, path}`` (``path``: the image
        file, or None), by index: a checkpoint's and the output folder's ``skipped_samples.json``."""
        names = (*BAD_SAMPLE_CATEGORIES, "tokenization_mismatch")
        out = []
        for i in self._status.nonzero().flatten().tolist():
            sample = self.list_data_dict[i]
            image = sample.get("image") if isinstance(sample, dict) else None
            path = os.path.join(self.image_folder or "", image) if isinstance(image, str) else None
            out.append(dict(index=i, id=str(self._sample_id(i)), category=names[int(self._status[i]) - 1], path=path))
        return out

    def restore_status(self, record: list[dict[str, Any]] | dict[str, str]) -> None:
        """Take back :meth:`status_record` from the checkpoint a run resumes from (counts stay exact); the older
        ``{index: category}`` form is read too."""
        names = (*BAD_SAMPLE_CATEGORIES, "tokenization_mismatch")
        pairs = record.items() if isinstance(record, dict) else ((r.get("index"), r.get("category")) for r in record)
        for index, category in pairs:
            if category in names and 0 <= int(index) < len(self._status):
                self._status[int(index)] = max(int(self._status[int(index)]), names.index(category) + 1)

    def skip_counts(self) -> dict[str, int]:
        """Bad samples seen so far by category (all workers), plus ``tokenization_mismatch`` (kept)."""
        counts = torch.bincount(self._status.long(), minlength=_MISMATCH_CODE + 1).tolist()
        out = {name: counts[k + 1] for k, name in enumerate(BAD_SAMPLE_CATEGORIES) if counts[k + 1]}
        if counts[_MISMATCH_CODE]:
            out["tokenization_mismatch"] = counts[_MISMATCH_CODE]
        return out

    def skip_report(self) -> str:
        """One line for the end of training, or ``""`` when nothing was skipped or masked.

        e.g. ``skipped 3 bad samples: missing_image=2, too_long=1`` (this process and its workers).
        """
        counts = self.skip_counts()
        mismatched = counts.pop("tokenization_mismatch", 0)
        parts = []
        if counts:
            detail = ", ".join(f"{k}={v}" for k, v in counts.items())
            parts.append(f"skipped {sum(counts.values())} bad samples: {detail}")
        if mismatched:
            parts.append(f"{mismatched} samples fully masked after a tokenization mismatch (see warnings)")
        return "; ".join(parts)


class DataCollatorForSupervisedDataset:
    """Right-pad a list of dataset items into a batch.

    ``input_ids`` are padded with ``pad_token_id`` (default: the tokenizer's pad token, else its unk
    token), ``labels`` with -100; ``attention_mask`` is built from the true lengths (a pad id may
    also be a real token). Sequences are cut to ``tokenizer.model_max_length``. ``images`` is an
    ``(N_images, 3, H, W)`` tensor of the items that have one, in batch order, absent if none do.
    """

    def __init__(self, tokenizer: Any, pad_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        if pad_token_id is None:
            pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
            )
        if pad_token_id is None:
            raise ValueError(
                "the tokenizer has neither a pad token nor an unk token; set tokenizer.pad_token "
                "(train() does) or pass pad_token_id to DataCollatorForSupervisedDataset"
            )
        self.pad_token_id = int(pad_token_id)

    def __call__(self, instances: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("DataCollatorForSupervisedDataset got an empty batch")
        max_len = getattr(self.tokenizer, "model_max_length", None) or int(1e30)
        ids = [inst["input_ids"][:max_len] for inst in instances]
        labs = [inst["labels"][:max_len] for inst in instances]
        width = max(x.numel() for x in ids)
        batch_size = len(instances)
        input_ids = torch.full((batch_size, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.bool)
        for row, (x, y) in enumerate(zip(ids, labs)):
            input_ids[row, : x.numel()] = x
            labels[row, : y.numel()] = y
            attention_mask[row, : x.numel()] = True
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        images = []
        for row, inst in enumerate(instances):
            image = inst.get("image")
            if image is None:
                continue
            if not bool((ids[row] == IMAGE_TOKEN_INDEX).any()):
                raise ValueError(
                    f"batch row {row} has an image but its <image> placeholder was cut off by "
                    f"model_max_length={max_len}; raise --model_max_length"
                )
            images.append(image)
        if images:
            batch["images"] = torch.stack(images, dim=0)
        return batch
