"""The datasets the Trainer gets: the training set, the validation set (``--eval_data_path``) and the collator.

:class:`EvalSupervisedDataset` differs from the training set in one way: with ``--skip_bad_samples`` a bad
validation sample becomes an empty row (left out, counted), never a substitute sample, so no sample is
counted twice; :func:`check_eval_set` finds bad validation samples at launch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from llava.constants import IGNORE_INDEX
from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
from llava.data.preprocess import BadSampleError
from llava.utils.user_errors import fail


class EvalSupervisedDataset(LazySupervisedDataset):
    """The validation set: with ``--skip_bad_samples`` a bad sample becomes an empty row (no supervised
    token, counted in the skip report), instead of the training set's next good sample."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.get_or_none(i)
        if item is not None:
            return item
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return dict(input_ids=torch.tensor([pad]), labels=torch.tensor([IGNORE_INDEX]))


def check_eval_set(dataset: EvalSupervisedDataset) -> None:
    """Render every validation sample's tokens, check their length and find its image file at launch, so a
    bad one stops the run now (one line, exit 2) rather than at the first evaluation; with
    ``--skip_bad_samples`` it is counted and left out instead."""
    for i in range(len(dataset)):
        try:
            dataset.precheck(i)
        except BadSampleError as err:
            if not dataset.skip_bad_samples:
                fail(f"validation set: {err}")
            dataset.mark_bad(i, err.category)


def make_supervised_data_module(tokenizer: Any, data_args: Any, records: Sequence[Any] | None = None,
                                eval_records: Sequence[Any] | None = None) -> dict[str, Any]:
    """``dict(train_dataset=..., eval_dataset=..., data_collator=...)`` for the HF Trainer.

    ``records`` / ``eval_records``: the data files already read (``train()`` reads them before any weights
    load). ``eval_dataset`` is None without ``--eval_data_path``; its images come from
    ``--eval_image_folder`` (default ``--image_folder``).
    """
    train_dataset = LazySupervisedDataset(data_args.data_path, tokenizer, data_args, list_data_dict=records)
    eval_dataset = None
    eval_path = getattr(data_args, "eval_data_path", None)
    if eval_path:
        eval_args = copy.copy(data_args)
        eval_args.image_folder = getattr(data_args, "eval_image_folder", None) or data_args.image_folder
        eval_dataset = EvalSupervisedDataset(eval_path, tokenizer, eval_args, list_data_dict=eval_records)
    return dict(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForSupervisedDataset(tokenizer),
    )
