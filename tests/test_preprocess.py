"""Label masks for every template, checked against expected masks written out segment by segment.

Expected ids are built by tokenizing each segment of the rendered conversation on its own and
concatenating; expected labels put an explicit ``[-100] * len(segment)`` run over every segment
that must not be supervised. Segment tokenization rules of the tiny sentencepiece tokenizer (same
as Llama's): a segment that starts a string gets a word-boundary marker, so a segment that follows a
special token (``</s>``) in the conversation is tokenized after that special token and the special
token's id is dropped (``after_special``).
"""

from __future__ import annotations

import logging

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.data.preprocess import (
    BadSampleError,
    preprocess,
    preprocess_llama_2,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
)

IGN = IGNORE_INDEX
IMG = IMAGE_TOKEN_INDEX


def conv(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def after_special(tok, text: str) -> list[int]:
    """Tokens of ``text`` as it appears right after ``</s>`` in a conversation."""
    ids = tok("</s>" + text, add_special_tokens=False).input_ids
    assert ids[0] == tok.eos_token_id
    return ids[1:]


def ignore(ids: list[int]) -> list[int]:
    return [IGN] * len(ids)


def supervised_runs(ids: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    runs, cur = [], []
    for i, lab in zip(ids.tolist(), labels.tolist()):
        if lab == IGN:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(lab)
    return runs + ([cur] if cur else [])


def test_plain_mask(llama_tokenizer) -> None:
    tok = llama_tokenizer
    out = preprocess([conv("<image>\nDescribe the picture.", "a red circle")], tok, "plain", has_image=True)
    caption = enc(tok, "a red circle\n")
    expected_ids = [tok.bos_token_id, IMG] + caption
    expected_labels = [IGN, IGN] + caption
    assert out["input_ids"][0].tolist() == expected_ids
    assert out["labels"][0].tolist() == expected_labels
    assert tok.decode(out["labels"][0][2:]) == "a red circle\n"


def test_plain_rejects_multi_turn_and_text_only(llama_tokenizer) -> None:
    with pytest.raises(
        BadSampleError,
        match=r"bad_conversation: sample id='p1': the 'plain' template \(pretraining\) "
        r"needs exactly one human turn containing <image>",
    ):
        preprocess_plain([conv("<image>\nq", "a", "q2", "b")], llama_tokenizer, sample_id="p1")
    with pytest.raises(BadSampleError, match="got 2 turns"):
        preprocess_plain([conv("no image", "a")], llama_tokenizer, sample_id="p2")


def test_v1_multi_turn_mask_with_image(llama_tokenizer) -> None:
    tok = llama_tokenizer
    system = get_conv_template("v1").system
    out = preprocess_v1(
        [conv("<image>\nwhat is it?", "a red circle", "where is it?", "top left")],
        tok,
        get_conv_template("v1"),
        has_image=True,
        sample_id="v1-a",
    )
    instr1 = [tok.bos_token_id] + enc(tok, system + " USER: ") + [IMG] + enc(tok, "\nwhat is it? ASSISTANT:")
    ans1 = enc(tok, "a red circle") + [tok.eos_token_id]
    instr2 = after_special(tok, "USER: where is it? ASSISTANT:")
    ans2 = enc(tok, "top left") + [tok.eos_token_id]
    assert out["input_ids"][0].tolist() == instr1 + ans1 + instr2 + ans2
    assert out["labels"][0].tolist() == ignore(instr1) + ans1 + ignore(instr2) + ans2
    runs = supervised_runs(out["input_ids"][0], out["labels"][0])
    assert [tok.decode(r) for r in runs] == ["a red circle</s>", "top left</s>"]
    assert out["num_mismatched"] == 0


def test_v1_text_only_matches_plain_tokenization(llama_tokenizer) -> None:
    tok = llama_tokenizer
    c = get_conv_template("vicuna_v1")
    out = preprocess([conv("hi", "yes")], tok, "vicuna_v1", has_image=False)
    prompt = c.system + " USER: hi ASSISTANT: yes</s>"
    assert out["input_ids"][0].tolist() == tok(prompt).input_ids
    instr = [tok.bos_token_id] + enc(tok, c.system + " USER: hi ASSISTANT:")
    assert out["labels"][0].tolist() == ignore(instr) + enc(tok, "yes") + [tok.eos_token_id]


def test_v1_drops_leading_gpt_turn(llama_tokenizer) -> None:
    sample = [{"from": "gpt", "value": "stray"}] + conv("hi", "yes")
    a = preprocess([sample], llama_tokenizer, "v1")
    b = preprocess([conv("hi", "yes")], llama_tokenizer, "v1")
    assert torch.equal(a["input_ids"][0], b["input_ids"][0]) and torch.equal(a["labels"][0], b["labels"][0])


def test_llava_v1_template(llama_tokenizer) -> None:
    tok = llama_tokenizer
    out = preprocess([conv("hi", "yes")], tok, "llava_v1")
    instr = [tok.bos_token_id] + enc(tok, get_conv_template("llava_v1").system + " USER: hi ASSISTANT:")
    assert out["labels"][0].tolist() == ignore(instr) + enc(tok, "yes") + [tok.eos_token_id]


def test_llama_2_multi_turn_mask_with_image(llama_tokenizer) -> None:
    tok = llama_tokenizer
    c = get_conv_template("llava_llama_2")
    out = preprocess_llama_2(
        [conv("<image>\nwhat is it?", "a red circle", "more", "no")], tok, c, has_image=True, sample_id="l2"
    )
    instr1 = (
        [tok.bos_token_id]
        + enc(tok, f"[INST] <<SYS>>\n{c.system}\n<</SYS>>\n\n")
        + [IMG]
        + enc(tok, "\nwhat is it? [/INST]")
    )
    ans1 = enc(tok, "a red circle ") + [tok.eos_token_id]
    instr2 = after_special(tok, "<s>[INST] more [/INST]")
    ans2 = enc(tok, "no ") + [tok.eos_token_id]
    assert out["input_ids"][0].tolist() == instr1 + ans1 + instr2 + ans2
    assert out["labels"][0].tolist() == ignore(instr1) + ans1 + ignore(instr2) + ans2
    runs = supervised_runs(out["input_ids"][0], out["labels"][0])
    assert [tok.decode(r) for r in runs] == ["a red circle </s>", "no </s>"]


def test_chat_template_multi_turn_mask(qwen2_tokenizer) -> None:
    tok = qwen2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    out = preprocess(
        [conv("<image>\nwhat is it?", "a red circle", "more", "no")],
        tok,
        "chat_template",
        has_image=True,
        sample_id="q",
    )
    instr1 = (
        enc(tok, "<|im_start|>user\n") + [IMG] + enc(tok, "\nwhat is it?<|im_end|>\n<|im_start|>assistant\n")
    )
    ans1 = enc(tok, "a red circle") + [im_end]
    instr2 = enc(tok, "\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n")
    ans2 = enc(tok, "no") + [im_end]
    tail = enc(tok, "\n")
    assert out["input_ids"][0].tolist() == instr1 + ans1 + instr2 + ans2 + tail
    assert out["labels"][0].tolist() == ignore(instr1) + ans1 + ignore(instr2) + ans2 + ignore(tail)
    runs = supervised_runs(out["input_ids"][0], out["labels"][0])
    assert runs == [ans1, ans2]
    assert tok.bos_token_id not in out["input_ids"][0].tolist()  # template owns every special token


def test_chat_template_text_only(qwen2_tokenizer) -> None:
    tok = qwen2_tokenizer
    out = preprocess([conv("hi", "yes")], tok, "chat_template", has_image=False)
    full = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}], tokenize=False
    )
    assert out["input_ids"][0].tolist() == enc(tok, full)
    assert supervised_runs(out["input_ids"][0], out["labels"][0]) == [
        enc(tok, "yes") + [tok.convert_tokens_to_ids("<|im_end|>")]
    ]


class _SplitBoundaryTokenizer:
    """Wraps a tokenizer; texts ending in 'ASSISTANT:' get one extra id, as after a tokenizer upgrade."""

    def __init__(self, tok) -> None:
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kwargs):
        out = self._tok(text, **kwargs)
        if text.endswith("ASSISTANT:"):
            out["input_ids"] = out["input_ids"] + [self._tok.unk_token_id]
        return out


def test_tokenization_mismatch_masks_sample_and_warns(llama_tokenizer, caplog) -> None:
    tok = _SplitBoundaryTokenizer(llama_tokenizer)
    with caplog.at_level(logging.WARNING, logger="llava.data.preprocess"):
        out = preprocess([conv("hi", "yes")], tok, "v1", sample_id="sample-42")
    assert out["num_mismatched"] == 1
    assert (out["labels"][0] == IGN).all()
    assert (
        out["input_ids"][0].tolist()
        == llama_tokenizer(get_conv_template("v1").system + " USER: hi ASSISTANT: yes</s>").input_ids
    )
    assert "tokenization mismatch in sample 'sample-42'" in caplog.text
    assert "The whole sample is masked" in caplog.text


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (conv("hi"), r"bad_conversation: sample id='s': no 'gpt' answer to supervise"),
        (
            [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
            r"turns must alternate human/gpt starting with human; turn 1 is from 'human'",
        ),
        ([{"from": "user", "value": "a"}], r"turn 0 has 'from': 'user'; expected 'human' or 'gpt'"),
        ([{"from": "human"}], r"malformed_sample: sample id='s': conversation turn 0 is not"),
    ],
)
def test_bad_conversations(llama_tokenizer, sample, message) -> None:
    with pytest.raises(BadSampleError, match=message):
        preprocess([sample], llama_tokenizer, "v1", sample_id="s")


def test_dispatcher_rejects_wrong_style(llama_tokenizer) -> None:
    with pytest.raises(ValueError, match="preprocess_v1 needs a TWO template; 'llama_v2' is LLAMA_2"):
        preprocess_v1([conv("a", "b")], llama_tokenizer, "llama_2")
    with pytest.raises(ValueError, match="unknown conversation template 'nope'"):
        preprocess([conv("a", "b")], llama_tokenizer, "nope")


def test_preprocess_does_not_mutate_input(llama_tokenizer) -> None:
    sample = conv("<image>\nq", "a")
    before = [dict(s) for s in sample]
    preprocess([sample], llama_tokenizer, "plain", has_image=True)
    assert sample == before


def test_preprocess_multimodal_moves_image_to_front() -> None:
    src = [conv("What is this?\n<image>", "a cat", "and <image> here", "no")]
    out = preprocess_multimodal(src, is_multimodal=True, mm_use_im_start_end=False)
    assert out[0][0]["value"] == "<image>\nWhat is this?"
    assert out[0][2]["value"] == "<image>\nand  here"
    assert src[0][0]["value"] == "What is this?\n<image>"  # input untouched
    tagged = preprocess_multimodal([conv("<image> x", "y")], is_multimodal=True, mm_use_im_start_end=True)
    assert tagged[0][0]["value"] == "<im_start><image><im_end>\nx"
    assert preprocess_multimodal(src, is_multimodal=False, mm_use_im_start_end=False) == src
