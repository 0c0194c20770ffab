"""Length- and modality-grouped sampling (upstream's ``--group_by_modality_length``), made robust.

Indices are shuffled, cut into *megabatches* of ``world_size * batch_size``, each megabatch sorted
by length (longest first) and split into ``world_size`` chunks of similar total length, so every
rank gets a batch of similar-length samples. With modality grouping, lengths are signed:
positive for samples with an image, negative (or zero) for text-only ones; each megabatch then
holds a single modality, except the last one, which collects both leftovers.

Differences from upstream: all randomness comes from the ``generator`` given (upstream shuffled
the per-modality lists with the global RNG); a dataset with only one modality, zero lengths or
fewer samples than a megabatch works instead of asserting or dropping samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Split ``indices`` into ``num_chunks`` lists of equal size with similar total length (greedy)."""
    if len(indices) % num_chunks != 0:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += abs(lengths[index])
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """A permutation of ``range(len(lengths))`` grouped so each megabatch holds similar lengths."""
    _check_sizes(batch_size, world_size)
    if len(lengths) == 0:
        return []
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    out: list[int] = []
    for start in range(0, len(indices), megabatch_size):
        megabatch = sorted(
            indices[start : start + megabatch_size], key=lambda i: abs(lengths[i]), reverse=True
        )
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            out.extend(chunk)
    return out


def get_modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """Like :func:`get_length_grouped_indices`, but megabatches never mix modalities (except the last).

    ``lengths[i] > 0`` marks a multimodal sample, ``<= 0`` a text-only one (upstream's sign convention).
    """
    _check_sizes(batch_size, world_size)
    mm = [i for i, length in enumerate(lengths) if length > 0]
    lang = [i for i, length in enumerate(lengths) if length <= 0]
    if not mm or not lang:
        return get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)

    megabatch_size = world_size * batch_size

    def grouped(subset: list[int]) -> list[list[int]]:
        order = get_length_grouped_indices(
            [abs(lengths[i]) for i in subset], batch_size, world_size, generator
        )
        shuffled = [subset[i] for i in order]
        return [shuffled[i : i + megabatch_size] for i in range(0, len(shuffled), megabatch_size)]

    mm_megabatches, lang_megabatches = grouped(mm), grouped(lang)
    leftovers = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in order]
    megabatches.append(sorted(leftovers))
    return [i for megabatch in megabatches for i in megabatch]


def _check_sizes(batch_size: int, world_size: int) -> None:
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and world_size ({world_size}) must be positive")


class LengthGroupedSampler(Sampler[int]):
    """Yield a length-grouped (optionally modality-grouped) permutation of the dataset each epoch.

    ``batch_size`` should be the per-device batch times gradient accumulation steps (as upstream's
    trainer passes it); ``lengths`` come from the dataset's ``lengths`` or ``modality_lengths``.
    """

    def __init__(
        self,
        batch_size: int,
        world_size: int,
        lengths: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        group_by_modality: bool = False,
    ) -> None:
        if lengths is None:
            raise ValueError(
                "LengthGroupedSampler needs `lengths` (the dataset's lengths or modality_lengths)"
            )
        _check_sizes(batch_size, world_size)
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.generator = generator
        self.group_by_modality = group_by_modality

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if self.group_by_modality:
            indices = get_modality_length_grouped_indices(
                self.lengths, self.batch_size, self.world_size, generator=self.generator
            )
        else:
            indices = get_length_grouped_indices(
                self.lengths, self.batch_size, self.world_size, generator=self.generator
            )
        return iter(indices)
