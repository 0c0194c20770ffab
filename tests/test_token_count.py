"""Packing's token counts equal, sample for sample, what preprocessing gives training, over any number of workers
(issue 28): every conversation template (the tokenizer's chat template too), image / text-only / multi-turn /
mid-text image / too-long samples and structurally bad ones."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from helpers_data import write_shapes_dataset

from llava.constants import IMAGE_TOKEN_INDEX
from llava.data.dataset import LazySupervisedDataset
from llava.data.token_count import count_tokens

TEMPLATES = ["plain", "v1", "llava_v1", "llama_2", "llava_llama_2"]


def _corpus(image: str) -> list[dict]:
    turn = [{"from": "human", "value": "<image>\nWhat is here?"}, {"from": "gpt", "value": "A red circle, top left."}]
    long_text = " ".join(["word"] * 400)
    out = [
        {"id": "one-turn", "image": image, "conversations": turn},
        {"id": "multi", "image": image, "conversations": turn + [
            {"from": "human", "value": "And the colour of the square?"}, {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "Count them."}, {"from": "gpt", "value": "Two shapes."}]},
        {"id": "mid-text", "image": image, "conversations": [
            {"from": "human", "value": "Look at <image> and say what is red."},
            {"from": "gpt", "value": "The circle."}]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "Say hello."},
                                              {"from": "gpt", "value": "Hello there, friend."}]},
        {"id": "gpt-first", "conversations": [{"from": "gpt", "value": "I start."}, {"from": "human", "value": "Hi"},
                                              {"from": "gpt", "value": "Yes."}]},
        {"id": "too-long", "image": image, "conversations": [{"from": "human", "value": "<image>\n" + long_text},
                                                             {"from": "gpt", "value": long_text}]},
        {"id": "no-convs", "image": image},
        {"id": "empty-value", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]},
    ]
    return out * 3  # enough samples for several worker slices


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data = write_shapes_dataset(tmp_path_factory.mktemp("token_count"), n=2, text_only=0)
    image = json.loads(open(data.finetune_json).read())[0]["image"]
    path = os.path.join(data.root, "corpus.json")
    with open(path, "w") as f:
        json.dump(_corpus(image), f)
    return data, str(path)


def _dataset(corpus, tokenizer, processor, template: str) -> LazySupervisedDataset:
    data, path = corpus
    args = SimpleNamespace(image_folder=data.image_folder, image_aspect_ratio="pad", is_multimodal=True,
                           image_processor=processor, conv_version=template, num_image_tokens=16,
                           skip_bad_samples=True)
    tokenizer.model_max_length = 2048  # the too-long sample is counted in full: packing decides what fits
    return LazySupervisedDataset(path, tokenizer, args)


@pytest.fixture(scope="module")
def processor(tiny_clip):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(tiny_clip)


@pytest.mark.parametrize("template", [*TEMPLATES, "chat_template"])
def test_counts_equal_the_training_samples_for_every_worker_count(template, corpus, llama_tokenizer,
                                                                  qwen2_tokenizer, processor):
    # chat_template: the Qwen2 tokenizer's own ChatML template (tokenized without added special tokens)
    tokenizer = qwen2_tokenizer if template == "chat_template" else llama_tokenizer
    dataset = _dataset(corpus, tokenizer, processor, template)
    serial = count_tokens(dataset, workers=1)
    assert count_tokens(dataset, workers=3) == serial == count_tokens(dataset, workers=len(dataset))
    tokens, images = serial
    bad = 0
    for i in range(len(dataset)):
        item = dataset.get_or_none(i)  # what training fetches (image loaded, tokens rendered)
        if item is None:
            assert tokens[i] == -1, (template, i)
            bad += 1
            continue
        ids = item["input_ids"]
        assert (tokens[i], images[i]) == (ids.numel(), int((ids == IMAGE_TOKEN_INDEX).sum())), (template, i)
        assert item["labels"].numel() == tokens[i]
    assert bad >= 3 and max(tokens) > 400  # the structural cases were bad, the long one counted in full


def test_a_dead_worker_is_an_error_naming_its_slice(corpus, llama_tokenizer, processor):
    dataset = _dataset(corpus, llama_tokenizer, processor, "v1")
    victim = len(dataset) - 2

    class Dying:
        def __len__(self) -> int:
            return len(dataset)

        def token_count(self, i: int) -> tuple[int, int]:
            if i == victim:
                os._exit(9)  # the worker is killed (as by the OOM killer)
            return dataset.token_count(i)

    with pytest.raises(RuntimeError, match=r"worker for samples from index \d+ died \(exit code 9\)"):
        count_tokens(Dying(), workers=2)
