"""Length- and modality-grouped sampling, including the single-modality and tiny-dataset cases."""

from __future__ import annotations

import random

import pytest
import torch

from llava.data.sampler import (
    LengthGroupedSampler,
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mixed_lengths(n: int = 103, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 300) * (1 if rng.random() < 0.6 else -1) for _ in range(n)]


def test_split_to_even_chunks_balances_lengths() -> None:
    lengths = [10, 9, 8, 7, 2, 1]
    chunks = split_to_even_chunks([0, 1, 2, 3, 4, 5], lengths, 2)
    assert sorted(i for c in chunks for i in c) == list(range(6))
    assert all(len(c) == 3 for c in chunks)
    totals = [sum(lengths[i] for i in c) for c in chunks]
    assert abs(totals[0] - totals[1]) <= 4
    assert split_to_even_chunks([0, 1, 2], [1, 1, 1], 2) == [[0, 2], [1]]


def test_length_grouped_is_a_permutation_sorted_within_megabatches() -> None:
    lengths = [abs(x) for x in _mixed_lengths()]
    batch, world = 4, 2
    out = get_length_grouped_indices(lengths, batch, world, generator=_gen())
    assert sorted(out) == list(range(len(lengths)))
    mega = batch * world
    for start in range(0, len(out) - mega + 1, mega):
        chunks = [out[start + r * batch : start + (r + 1) * batch] for r in range(world)]
        for chunk in chunks:  # each rank's batch is longest-first
            assert [lengths[i] for i in chunk] == sorted((lengths[i] for i in chunk), reverse=True)


def test_modality_grouping_keeps_megabatches_single_modality() -> None:
    lengths = _mixed_lengths()
    batch, world = 4, 2
    mega = batch * world
    out = get_modality_length_grouped_indices(lengths, batch, world, generator=_gen())
    assert sorted(out) == list(range(len(lengths)))
    full = (
        len(out) - (len([x for x in lengths if x > 0]) % mega) - (len([x for x in lengths if x <= 0]) % mega)
    )
    for start in range(0, full, mega):
        signs = {lengths[i] > 0 for i in out[start : start + mega]}
        assert len(signs) == 1


@pytest.mark.parametrize("sign", [1, -1])
def test_single_modality_works(sign: int) -> None:
    lengths = [sign * (i % 17 + 1) for i in range(50)]
    out = get_modality_length_grouped_indices(lengths, 4, 2, generator=_gen())
    assert sorted(out) == list(range(50))


def test_zero_lengths_and_tiny_datasets() -> None:
    lengths = [0, 5, -3, 0, 7]
    out = get_modality_length_grouped_indices(lengths, 8, 4, generator=_gen())
    assert sorted(out) == list(range(5))
    assert get_length_grouped_indices([], 2, 2) == []
    assert get_modality_length_grouped_indices([3], 2, 2, generator=_gen()) == [0]


def test_deterministic_with_generator() -> None:
    lengths = _mixed_lengths()
    a = get_modality_length_grouped_indices(lengths, 4, 2, generator=_gen(7))
    b = get_modality_length_grouped_indices(lengths, 4, 2, generator=_gen(7))
    c = get_modality_length_grouped_indices(lengths, 4, 2, generator=_gen(8))
    assert a == b and a != c


def test_sampler() -> None:
    lengths = _mixed_lengths(40)
    sampler = LengthGroupedSampler(2, 2, lengths=lengths, generator=_gen(), group_by_modality=True)
    assert len(sampler) == 40 and sorted(sampler) == list(range(40))
    plain = LengthGroupedSampler(2, 1, lengths=[abs(x) for x in lengths], generator=_gen())
    assert sorted(plain) == list(range(40))
    with pytest.raises(ValueError, match="needs `lengths`"):
        LengthGroupedSampler(2, 1)
    with pytest.raises(ValueError, match="must be positive"):
        LengthGroupedSampler(0, 1, lengths=[1])
