"""``--packing True``, data side: first-fit-decreasing packs, the length cache, the packed rows, bad samples."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers_data import write_shapes_dataset

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data import packing
from llava.data.dataset import LazySupervisedDataset
from llava.data.preprocess import BadSampleError


def test_ffd_packs_every_sample_once_within_capacity_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (500,), generator=gen).tolist()
    packs = packing.first_fit_decreasing(lengths, capacity=100, seed=3, buffer_size=64)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in p) <= 100 for p in packs)
    assert packs == packing.first_fit_decreasing(lengths, capacity=100, seed=3, buffer_size=64)
    assert packs != packing.first_fit_decreasing(lengths, capacity=100, seed=4, buffer_size=64)
    fill = sum(lengths) / (len(packs) * 100)
    assert fill > 0.95, fill  # FFD leaves little room on such lengths


def test_ffd_is_first_fit_decreasing_inside_a_buffer():
    # one buffer, decreasing: 7 -> bin 0, 6 -> bin 1, 3 -> bin 0 (the first that fits), 3 -> bin 1, 1 -> bin 1
    lengths = [3, 7, 1, 6, 3]
    packs = packing.first_fit_decreasing(lengths, capacity=10, seed=0, buffer_size=5)
    assert [[lengths[i] for i in p] for p in packs] == [[7, 3], [6, 3, 1]]


def test_ffd_keeps_groups_apart_and_leaves_out_negative_lengths():
    lengths = [5, 5, 5, 5, -1, 5]
    groups = [1, 0, 1, 0, 0, 1]
    packs = packing.first_fit_decreasing(lengths, capacity=100, seed=0, buffer_size=10, groups=groups)
    assert sorted(sorted(p) for p in packs) == [[0, 2, 5], [1, 3]]
    with pytest.raises(ValueError, match="fit the capacity"):
        packing.first_fit_decreasing([5, 200], capacity=100, seed=0, buffer_size=10)


@pytest.fixture()
def dataset(tmp_path, llama_tokenizer, tiny_clip):
    from transformers import CLIPImageProcessorPil

    data = write_shapes_dataset(tmp_path / "data", n=6, text_only=2)
    args = SimpleNamespace(image_folder=data.image_folder, image_aspect_ratio="pad", is_multimodal=True,
                           image_processor=CLIPImageProcessorPil.from_pretrained(tiny_clip), conv_version="v1",
                           num_image_tokens=16, skip_bad_samples=True)
    llama_tokenizer.model_max_length = 256
    return LazySupervisedDataset(str(data.finetune_json), llama_tokenizer, args)


def test_token_counts_match_the_fetched_samples(dataset):
    for i in range(len(dataset)):
        tokens, images = dataset.token_count(i)
        item = dataset[i]
        assert tokens == item["input_ids"].numel()
        assert images == int((item["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == int("image" in item)


def test_length_cache_is_reused_and_invalidated(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "lengths.json"
    first = packing.sample_lengths(dataset, str(cache))
    assert json.loads(cache.read_text())["tokens"] == first[0]

    def never(i):
        raise AssertionError("counted again although the cache matches")

    monkeypatch.setattr(dataset, "token_count", never)
    assert packing.sample_lengths(dataset, str(cache)) == first
    monkeypatch.undo()
    records = json.loads(open(dataset.data_path).read())
    records[0]["conversations"][1]["value"] += " and much more text here to count"
    with open(dataset.data_path, "w") as f:
        json.dump(records, f)
    dataset.list_data_dict = records
    again = packing.sample_lengths(dataset, str(cache))
    assert again[0][0] > first[0][0] and again[0][1:] == first[0][1:]


@pytest.mark.parametrize("damage", ["empty", "truncated", "forged counts", "not an object"])
def test_a_damaged_length_cache_is_warned_about_and_recounted(dataset, tmp_path, caplog, damage):
    cache = tmp_path / "lengths.json"
    first = packing.sample_lengths(dataset, str(cache))
    text = cache.read_text()
    if damage == "empty":
        cache.write_text("")
    elif damage == "truncated":
        cache.write_text(text[: len(text) // 2])
    elif damage == "not an object":
        cache.write_text("[1, 2]")
    else:  # a hand edit that would let a pack exceed the length: counts changed, digest left alone
        cached = json.loads(text)
        cached["tokens"][0] = 1
        cache.write_text(json.dumps(cached))
    with caplog.at_level("WARNING", logger="llava.data.packing"):
        assert packing.sample_lengths(dataset, str(cache)) == first
    expected = ("do not match their digest (edited or damaged); counting again" if damage == "forged counts"
                else "is unreadable")
    assert [r for r in caplog.records if expected in r.getMessage() and str(cache) in r.getMessage()], caplog.text
    assert json.loads(cache.read_text())["tokens"] == first[0]  # rewritten whole


def test_collator_concatenates_samples_marks_them_and_ignores_first_labels(dataset):
    packed = packing.PackedDataset(dataset, [[0, 4], [1]], [100, 100, 100, 100, 100, 100, 100, 100])
    items = [packed[0], packed[1]]
    batch = packing.PackedCollator(pad_token_id=0)(items)
    a, b, c = dataset[0], dataset[4], dataset[1]
    n_a, n_b, n_c = a["input_ids"].numel(), b["input_ids"].numel(), c["input_ids"].numel()
    assert batch["input_ids"].shape == (2, max(n_a + n_b, n_c))
    assert torch.equal(batch["input_ids"][0, :n_a + n_b], torch.cat([a["input_ids"], b["input_ids"]]))
    assert batch["packed_seq_ids"][0, :n_a + n_b].tolist() == [1] * n_a + [2] * n_b
    assert batch["labels"][0, n_a] == IGNORE_INDEX and batch["labels"][0, 0] == IGNORE_INDEX
    assert torch.equal(batch["labels"][0, n_a + 1:n_a + n_b], b["labels"][1:])
    assert batch["attention_mask"][1].sum() == n_c
    n_images = sum("image" in x for x in (a, b, c))
    assert batch["images"].shape[0] == n_images
    assert torch.equal(batch["images"][0], a["image"])


def test_a_sample_that_turns_out_bad_is_dropped_from_its_pack_and_counted(dataset, tmp_path):
    dataset.list_data_dict[0] = dict(dataset.list_data_dict[0], image="gone.png", id="gone")
    packed = packing.PackedDataset(dataset, [[0, 1]], [1] * len(dataset))
    items = packed[0]
    assert len(items) == 1 and torch.equal(items[0]["input_ids"], dataset[1]["input_ids"])
    assert packed.skip_report() == "skipped 1 bad samples: missing_image=1"
    dataset.skip_bad_samples = False
    with pytest.raises(BadSampleError, match="gone"):
        packed[0]


def test_too_long_samples_stop_the_run_or_are_skipped_and_counted(dataset):
    lengths = [40, 300, 40]
    dataset.skip_bad_samples = False
    with pytest.raises(BadSampleError, match="index 1"):
        packing.exclude_bad(dataset, lengths, 256, skip=False)
    assert packing.exclude_bad(dataset, lengths, 256, skip=True) == [40, -1, 40]
    assert dataset.skip_counts() == {"too_long": 1}


def _argv(tmp_path, tiny_llama, tiny_clip, data, *extra):
    return ["train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
            "--mm_use_im_patch_token", "False", "--data_path", str(data.finetune_json), "--image_folder",
            str(data.image_folder), "--output_dir", str(tmp_path / "out"), "--use_cpu", "True",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
            "--dataloader_num_workers", "0", "--packing", "True", *extra]


def _launch_error(argv: list[str], monkeypatch, capsys) -> str:
    """stderr of a train() launch that must stop with exit status 2."""
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as err:
        train()
    assert err.value.code == 2
    return capsys.readouterr().err


def test_a_too_long_sample_is_one_line_at_launch(tmp_path, tiny_llama, tiny_clip, monkeypatch, capsys):
    data = write_shapes_dataset(tmp_path / "data", n=4, text_only=0)
    err = _launch_error(_argv(tmp_path, tiny_llama, tiny_clip, data, "--model_max_length", "40"), monkeypatch, capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "model_max_length=40" in lines[0] and lines[0].count("--skip_bad_samples") == 1, lines


def test_packing_flags_without_packing_are_refused(tmp_path, tiny_llama, tiny_clip, monkeypatch, capsys):
    data = write_shapes_dataset(tmp_path / "data", n=2, text_only=0)
    argv = [a for a in _argv(tmp_path, tiny_llama, tiny_clip, data) if a not in ("--packing", "True")]
    err = _launch_error(argv + ["--packing_buffer_size", "10"], monkeypatch, capsys)
    assert "--packing_buffer_size has no effect without --packing True" in err


def test_supervised_token_count_is_the_same_packed_or_padded(dataset):
    """The Trainer normalizes the loss by labels[..., 1:] != -100 over the accumulation window: same count."""
    from llava.data.dataset import DataCollatorForSupervisedDataset

    order = list(range(len(dataset)))
    padded = DataCollatorForSupervisedDataset(dataset.tokenizer)([dataset[i] for i in order])
    packs = packing.first_fit_decreasing([dataset.token_count(i)[0] + 15 for i in order], 256, 0, 100)
    rows = packing.PackedCollator(0)([[dataset[i] for i in p] for p in packs])
    assert (padded["labels"][..., 1:] != IGNORE_INDEX).sum() == (rows["labels"][..., 1:] != IGNORE_INDEX).sum()
    assert rows["input_ids"].shape[0] < padded["input_ids"].shape[0]  # samples really shared rows


def test_packed_lora_training_with_a_cosine_regularizer_runs_and_logs_it(tmp_path, tiny_llama, tiny_clip,
                                                                         monkeypatch):
    from llava.train.train import train

    data = write_shapes_dataset(tmp_path / "data", n=8, text_only=2)
    monkeypatch.setattr(sys, "argv", _argv(tmp_path, tiny_llama, tiny_clip, data, "--model_max_length", "256",
                                           "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
                                           "--mm_cosine_loss", "constrain", "--logging_steps", "1",
                                           "--group_by_modality_length", "True", "--mm_projector_lr", "1e-3"))
    train()
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged and all("loss_cos" in h or "loss_tp" in h for h in logged)
    assert any("loss_cos" in h for h in logged)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    lengths = json.loads((tmp_path / "out" / "packing_lengths.json").read_text())
    assert len(lengths["tokens"]) == 10


def test_a_sample_that_cannot_be_rendered_is_never_dropped_silently(dataset, monkeypatch):
    real = dataset.token_count

    def count(i):
        if i == 1:
            raise BadSampleError("bad_conversation", "roles do not alternate").located("odd", dataset.data_path, 1)
        return real(i)

    monkeypatch.setattr(dataset, "token_count", count)
    tokens, images = packing.count_tokens(dataset)
    assert tokens[1] == -1 and tokens[0] > 0
    with pytest.raises(BadSampleError, match="odd"):
        packing.exclude_bad(dataset, tokens, 256, skip=False)
    assert packing.exclude_bad(dataset, tokens, 256, skip=True)[1] == -1
    assert dataset.skip_counts() == {"bad_conversation": 1}


def test_an_unknown_attention_implementation_is_one_line(tmp_path, tiny_llama, tiny_clip, monkeypatch, capsys):
    data = write_shapes_dataset(tmp_path / "data", n=2, text_only=0)
    err = _launch_error(_argv(tmp_path, tiny_llama, tiny_clip, data, "--attn_implementation", "fast"), monkeypatch,
                        capsys)
    assert "--attn_implementation 'fast' is not supported" in err


def test_one_row_collation_puts_the_batch_end_to_end(dataset):
    packs = [[dataset[0], dataset[4]], [dataset[1]]]
    rows = packing.PackedCollator(0)(packs)
    one = packing.PackedCollator(0, one_row=True)(packs)
    n = sum(x["input_ids"].numel() for p in packs for x in p)
    assert one["input_ids"].shape == (1, n) and bool(one["attention_mask"].all())
    assert one["packed_seq_ids"][0].unique().tolist() == [1, 2, 3]
    assert torch.equal(one["input_ids"][0], rows["input_ids"][rows["attention_mask"]])
    assert torch.equal(one["images"], rows["images"])
