"""LazySupervisedDataset, collator and bad-data handling (each bad case's exact message)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.dataset import (
    BadSampleError,
    DataCollatorForSupervisedDataset,
    DataFileError,
    LazySupervisedDataset,
)
from llava.data.supervised import make_supervised_data_module
from llava.train.arguments import DataArguments


@pytest.fixture(scope="module")
def clip_processor(tiny_clip):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(tiny_clip)


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 16), (255, 0, 0)).save(folder / "wide.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(folder / "square.png")
    noise = folder / "noise.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(noise)
    data = noise.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "garbage.png").write_bytes(b"not an image at all")
    return folder


def make_args(tmp_path, images, clip_processor, samples, **overrides) -> DataArguments:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    args = DataArguments(
        data_path=str(path),
        image_folder=str(images),
        is_multimodal=True,
        image_aspect_ratio=overrides.pop("image_aspect_ratio", "pad"),
        skip_bad_samples=overrides.pop("skip_bad_samples", False),
    )
    args.image_processor = clip_processor
    args.conv_version = overrides.pop("conv_version", "v1")
    args.num_image_tokens = overrides.pop("num_image_tokens", 16)
    assert not overrides
    return args


def img_sample(sid: str, image: str, question: str = "<image>\nwhat is it?", answer: str = "a red shape"):
    return {
        "id": sid,
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def text_sample(sid: str, question: str = "hi there", answer: str = "yes"):
    return {
        "id": sid,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def dataset(tmp_path, images, clip_processor, tokenizer, samples, **overrides) -> LazySupervisedDataset:
    args = make_args(tmp_path, images, clip_processor, samples, **overrides)
    return make_supervised_data_module(tokenizer, args)["train_dataset"]


def hint(category: str, sid: str, index: int, path: str) -> str:
    return f"{category}: sample id='{sid}' \\(index {index}\\) in {re.escape(path)}: "


SKIP_HINT = r"\. Pass --skip_bad_samples True to skip \(and count\) such samples, or fix the data file\.$"


# ---- good samples ----


def test_good_samples_pad_vs_square(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    samples = [img_sample("w", "wide.png"), text_sample("t")]
    pad = dataset(tmp_path, images, clip_processor, llama_tokenizer, samples, image_aspect_ratio="pad")
    square = dataset(tmp_path, images, clip_processor, llama_tokenizer, samples, image_aspect_ratio="square")
    a, b = pad[0], square[0]
    assert a["image"].shape == b["image"].shape == (3, 32, 32)
    assert a["image"][:, 0, 0].abs().max() < 0.02  # padded with the processor mean colour
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(clip_processor.image_mean)) / torch.tensor(
        clip_processor.image_std
    )
    assert torch.allclose(b["image"][:, 0, 0], red, atol=0.02)  # square: crop of the red image
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert (a["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1 and a["labels"][
        a["input_ids"] == IMAGE_TOKEN_INDEX
    ] == -100
    text = pad[1]
    assert "image" not in text and (text["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 0


def test_lengths_and_modality_lengths(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    samples = [
        img_sample("w", "wide.png", "<image>\nwhat is it?", "a red shape"),
        text_sample("t", "hi there", "yes"),
        text_sample("e", "", ""),
    ]
    ds = dataset(tmp_path, images, clip_processor, llama_tokenizer, samples)
    assert ds.lengths == [4 + 3 + 128, 3, 128 * 0]
    assert ds.modality_lengths == [7, -3, -1]


def test_image_key_in_text_only_model_is_rejected(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    args = make_args(tmp_path, images, clip_processor, [img_sample("w", "wide.png")])
    args.is_multimodal = False
    with pytest.raises(ValueError, match=r"has 1 samples with an 'image' but the model is text-only"):
        LazySupervisedDataset(args.data_path, llama_tokenizer, args)


# ---- bad data: exact messages ----


def test_missing_image(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    ds = dataset(tmp_path, images, clip_processor, llama_tokenizer, [img_sample("s_missing", "nope.png")])
    with pytest.raises(
        BadSampleError,
        match=hint("missing_image", "s_missing", 0, ds.data_path)
        + f"image file not found: {re.escape(str(images / 'nope.png'))} "
        + rf"\(image_folder='{re.escape(str(images))}'\)"
        + SKIP_HINT,
    ):
        ds[0]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.png", "OSError: image file is truncated"),
        ("garbage.png", "UnidentifiedImageError: cannot identify image file"),
    ],
)
def test_unreadable_image(tmp_path, images, clip_processor, llama_tokenizer, name, reason) -> None:
    ds = dataset(
        tmp_path, images, clip_processor, llama_tokenizer, [text_sample("ok"), img_sample("s_bad", name)]
    )
    with pytest.raises(
        BadSampleError,
        match=hint("unreadable_image", "s_bad", 1, ds.data_path)
        + f"cannot read image {re.escape(str(images / name))}: {reason}",
    ):
        ds[1]


def test_image_key_without_placeholder(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    ds = dataset(
        tmp_path, images, clip_processor, llama_tokenizer, [img_sample("s_tok", "wide.png", "what?")]
    )
    with pytest.raises(
        BadSampleError,
        match=hint("missing_image_token", "s_tok", 0, ds.data_path)
        + r"has 'image': 'wide.png' but no <image> in its conversations; add <image>\\n at the "
        + "start of the first human turn"
        + SKIP_HINT,
    ):
        ds[0]


def test_two_placeholders_for_one_image(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    sample = img_sample("s2", "wide.png")
    sample["conversations"] += [{"from": "human", "value": "<image> again"}, {"from": "gpt", "value": "no"}]
    ds = dataset(tmp_path, images, clip_processor, llama_tokenizer, [sample])
    with pytest.raises(
        BadSampleError,
        match=hint("too_many_image_tokens", "s2", 0, ds.data_path)
        + "has one 'image' but 2 <image> placeholders; keep exactly one",
    ):
        ds[0]


def test_too_long(tmp_path, images, clip_processor, llama_tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(llama_tokenizer, "model_max_length", 64)
    ds = dataset(
        tmp_path,
        images,
        clip_processor,
        llama_tokenizer,
        [img_sample("s_long", "wide.png")],
        num_image_tokens=576,
    )
    with pytest.raises(
        BadSampleError,
        match=hint("too_long", "s_long", 0, ds.data_path)
        + r"\d+ tokens \(1 image\(s\) x 576 tokens included\) exceed model_max_length=64; "
        + "raise --model_max_length or shorten it"
        + SKIP_HINT,
    ):
        ds[0]


def test_bad_conversation_is_located(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    ds = dataset(
        tmp_path,
        images,
        clip_processor,
        llama_tokenizer,
        [{"id": 7, "conversations": [{"from": "robot", "value": "x"}]}],
    )
    with pytest.raises(
        BadSampleError,
        match=hint("bad_conversation", 7, 0, ds.data_path).replace("'7'", "7") + "turn 0 has 'from': 'robot'",
    ):
        ds[0]


def test_malformed_json(tmp_path, llama_tokenizer) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "a",\n    "conversations": [}\n]')
    args = DataArguments(data_path=str(path))
    with pytest.raises(
        DataFileError,
        match=f"malformed JSON in {re.escape(str(path))} at line 3 column 23: "
        r"Expecting value\. Fix the file \(python -m json.tool shows the spot\) "
        "or pass another --data_path.",
    ):
        make_supervised_data_module(llama_tokenizer, args)
    lines = tmp_path / "broken.jsonl"
    lines.write_text(json.dumps(text_sample("a")) + "\n{oops\n")
    with pytest.raises(
        DataFileError, match=f"malformed JSON Lines in {re.escape(str(lines))} at line 2 column 2"
    ):
        LazySupervisedDataset(str(lines), llama_tokenizer, DataArguments(data_path=str(lines)))
    with pytest.raises(DataFileError, match="data file not found: 'nope.json'"):
        LazySupervisedDataset("nope.json", llama_tokenizer, DataArguments(data_path="nope.json"))
    obj = tmp_path / "obj.json"
    obj.write_text("{}")
    with pytest.raises(DataFileError, match="must hold a JSON list of samples, found a dict"):
        LazySupervisedDataset(str(obj), llama_tokenizer, DataArguments(data_path=str(obj)))


# ---- skipping ----

BAD_MIX = [
    img_sample("g0", "wide.png"),
    img_sample("b_missing", "nope.png"),
    img_sample("b_trunc", "truncated.png"),
    text_sample("g3"),
    img_sample("b_tok", "square.png", "no placeholder"),
    img_sample("g5", "square.png"),
    img_sample("b_missing2", "gone.png"),
]


def test_skip_bad_samples_counts_each_once(tmp_path, images, clip_processor, llama_tokenizer, caplog) -> None:
    ds = dataset(tmp_path, images, clip_processor, llama_tokenizer, BAD_MIX, skip_bad_samples=True)
    assert ds.skip_report() == "skipped 1 bad samples: missing_image_token=1"  # structural: known up front
    assert torch.equal(ds[1]["input_ids"], ds[3]["input_ids"])  # bad 1, 2 -> next good one (3)
    for _ in range(2):  # a second epoch must not double count
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 7
    assert torch.equal(items[6]["input_ids"], items[0]["input_ids"])  # wraps around to the first good one
    assert (
        ds.skip_report()
        == "skipped 4 bad samples: missing_image_token=1, missing_image=2, unreadable_image=1"
    )
    assert ds.skip_counts() == {"missing_image_token": 1, "missing_image": 2, "unreadable_image": 1}
    assert "skipping bad sample (--skip_bad_samples): missing_image: sample id='b_missing'" in caplog.text


def test_skip_counts_seen_from_dataloader_workers(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    module = make_supervised_data_module(
        llama_tokenizer, make_args(tmp_path, images, clip_processor, BAD_MIX, skip_bad_samples=True)
    )
    loader = torch.utils.data.DataLoader(
        module["train_dataset"], batch_size=2, num_workers=2, collate_fn=module["data_collator"]
    )
    batches = list(loader)
    assert sum(b["input_ids"].shape[0] for b in batches) == 7
    assert module["train_dataset"].skip_report().startswith("skipped 4 bad samples")


def test_all_bad_raises(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    ds = dataset(
        tmp_path,
        images,
        clip_processor,
        llama_tokenizer,
        [img_sample("x", "nope.png")],
        skip_bad_samples=True,
    )
    with pytest.raises(RuntimeError, match="every sample in .* is bad"):
        ds[0]


def test_tokenization_mismatch_is_reported(
    tmp_path, images, clip_processor, llama_tokenizer, monkeypatch
) -> None:
    ds = dataset(tmp_path, images, clip_processor, llama_tokenizer, [text_sample("t")])
    import llava.data.preprocess as pp

    real = pp._tokenize

    def shifted(text, tokenizer, has_image, add_special_tokens):
        ids = real(text, tokenizer, has_image, add_special_tokens)
        return ids + [0] if text.endswith("ASSISTANT:") else ids

    monkeypatch.setattr(pp, "_tokenize", shifted)
    assert (ds[0]["labels"] == IGNORE_INDEX).all()
    assert ds.skip_report() == "1 samples fully masked after a tokenization mismatch (see warnings)"


# ---- collator ----


def test_collator_pads_and_stacks_existing_images(tmp_path, images, clip_processor, llama_tokenizer) -> None:
    samples = [
        img_sample("a", "wide.png"),
        text_sample("b", "hi there friend how are you", "fine thanks"),
        img_sample("c", "square.png", answer="blue"),
    ]
    module = make_supervised_data_module(
        llama_tokenizer, make_args(tmp_path, images, clip_processor, samples)
    )
    items = [module["train_dataset"][i] for i in range(3)]
    batch = module["data_collator"](items)
    pad = llama_tokenizer.unk_token_id  # the tiny Llama tokenizer has no pad token
    assert llama_tokenizer.pad_token_id is None and module["data_collator"].pad_token_id == pad
    width = max(len(x["input_ids"]) for x in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    assert batch["images"].shape == (2, 3, 32, 32)
    assert torch.equal(batch["images"][0], items[0]["image"]) and torch.equal(
        batch["images"][1], items[2]["image"]
    )
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [True] * n + [False] * (width - n)


def test_collator_mask_from_lengths_not_values(llama_tokenizer) -> None:
    pad = llama_tokenizer.unk_token_id
    items = [
        dict(input_ids=torch.tensor([1, pad, 5]), labels=torch.tensor([-100, pad, 5])),
        dict(input_ids=torch.tensor([1]), labels=torch.tensor([-100])),
    ]
    batch = DataCollatorForSupervisedDataset(llama_tokenizer)(items)
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert "images" not in batch


def test_collator_truncates_and_needs_a_pad_id(llama_tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(llama_tokenizer, "model_max_length", 2)
    batch = DataCollatorForSupervisedDataset(llama_tokenizer, pad_token_id=3)(
        [dict(input_ids=torch.tensor([1, 2, 3, 4]), labels=torch.tensor([1, 2, 3, 4]))]
    )
    assert batch["input_ids"].tolist() == [[1, 2]] and batch["attention_mask"].all()
    with pytest.raises(ValueError, match="placeholder was cut off by model_max_length=2"):
        DataCollatorForSupervisedDataset(llama_tokenizer)(
            [
                dict(
                    input_ids=torch.tensor([1, 2, IMAGE_TOKEN_INDEX]),
                    labels=torch.tensor([-100] * 3),
                    image=torch.zeros(3, 4, 4),
                )
            ]
        )

    class NoPad:
        pad_token_id = None
        unk_token_id = None

    with pytest.raises(ValueError, match="neither a pad token nor an unk token; set tokenizer.pad_token"):
        DataCollatorForSupervisedDataset(NoPad())


@pytest.mark.parametrize("escape", ["abs", "dotdot"])
def test_image_outside_folder_is_refused_unless_allowed(tmp_path, images, clip_processor, llama_tokenizer,
                                                        escape) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (0, 255, 0)).save(outside)
    image = str(outside) if escape == "abs" else "../secret.png"
    ds = dataset(tmp_path, images, clip_processor, llama_tokenizer, [img_sample("s_out", image)])
    with pytest.raises(BadSampleError, match=hint("image_outside_folder", "s_out", 0, ds.data_path)
                       + rf"'image': '{re.escape(image)}' is not inside --image_folder .*"
                       r"--allow_absolute_image_paths True"):
        ds[0]
    args = make_args(tmp_path, images, clip_processor, [img_sample("s_out", image)])
    args.allow_absolute_image_paths = True
    assert make_supervised_data_module(llama_tokenizer, args)["train_dataset"][0]["image"].shape == (3, 32, 32)
    skip = dataset(tmp_path, images, clip_processor, llama_tokenizer,
                   [img_sample("s_out", image), img_sample("ok", "wide.png")], skip_bad_samples=True)
    assert skip[0]["image"].shape == (3, 32, 32) and skip.skip_counts() == {"image_outside_folder": 1}


def test_image_inside_folder_lexically() -> None:
    from llava.utils.image_files import image_inside_folder

    assert image_inside_folder("a/b.png", "/data/img") and image_inside_folder("a/../b.png", "/data/img")
    assert not image_inside_folder("/etc/passwd", "/data/img")
    assert not image_inside_folder("../img2/x.png", "/data/img") and not image_inside_folder("a/../../x", "/data/img")
