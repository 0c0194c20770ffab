"""One structural checker for a LLaVA-format sample, shared by training and the dataset doctor.

:func:`structural_problems` returns the sample's errors as ``(category, detail)`` pairs, first one first:
training raises the first as a ``BadSampleError`` (or skips and counts the sample with
``--skip_bad_samples``), the doctor lists them all as errors. :func:`structural_warnings` returns what
training repairs by itself (a leading gpt turn without the image is dropped, as upstream does). Images
and tokenization are checked elsewhere (lazily in training, by the doctor's workers).

Categories: ``malformed_sample`` (not a dict, no conversations list, a turn that is not
``{"from": str, "value": str}``, an ``image`` that is not one path), ``bad_conversation`` (a speaker other
than human/gpt, turns that do not alternate, no gpt answer, an empty gpt answer), ``missing_image_token``
(an image but no ``<image>``, or the only ``<image>`` in a leading gpt turn that training drops),
``too_many_image_tokens`` (more ``<image>`` placeholders than images, counted per occurrence),
``image_token_without_image`` (``<image>`` in the text without an ``image``).
"""

from __future__ import annotations

from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.utils.user_errors import fail

HUMAN, GPT = "human", "gpt"


def _shape_problem(sample: Any) -> tuple[str, str] | None:
    if not isinstance(sample, dict):
        return "malformed_sample", f"sample is a {type(sample).__name__}, not an object"
    convs = sample.get("conversations")
    if not isinstance(convs, list) or not convs:
        return "malformed_sample", "'conversations' must be a non-empty list of {'from', 'value'} turns"
    for j, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(
                turn.get("value"), str):
            return "malformed_sample", f"conversation turn {j} must be {{'from': str, 'value': str}}, got {turn!r:.80}"
    image = sample.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        return "malformed_sample", f"'image' must be one relative path, got {image!r:.80}"
    return None


def _placeholder_problem(sample: dict[str, Any]) -> tuple[str, str] | None:
    convs = sample["conversations"]
    count = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in convs)
    image = sample.get("image")
    if image is None:
        if count:
            return ("image_token_without_image", f"{count} {DEFAULT_IMAGE_TOKEN} placeholder(s) but no 'image' "
                    "key (the text would be trained literally); add the 'image' or remove the placeholder")
        return None
    if count == 0:
        return ("missing_image_token", f"has 'image': {image!r} but no {DEFAULT_IMAGE_TOKEN} in its conversations; "
                f"add {DEFAULT_IMAGE_TOKEN}\\n at the start of the first human turn")
    if count > 1:
        return ("too_many_image_tokens", f"has one 'image' but {count} {DEFAULT_IMAGE_TOKEN} placeholders; keep "
                "exactly one")
    if convs[0]["from"] != HUMAN and DEFAULT_IMAGE_TOKEN in convs[0]["value"]:
        return ("missing_image_token", f"the only {DEFAULT_IMAGE_TOKEN} is in the leading {convs[0]['from']!r} "
                "turn, which training drops (upstream); move it into the first human turn")
    return None


def role_problem(roles: list[str]) -> tuple[str, str] | None:
    """The first problem with a conversation's speaker sequence (each turn's ``from``), as training sees it: a
    leading non-human turn is dropped (upstream), then turns must alternate human/gpt with a gpt answer."""
    for j, role in enumerate(roles):
        if role not in (HUMAN, GPT):
            return "bad_conversation", f"turn {j} has 'from': {role!r}; expected 'human' or 'gpt'"
    if roles and roles[0] != HUMAN:
        roles = roles[1:]
    for j, role in enumerate(roles):
        if role != (HUMAN, GPT)[j % 2]:
            return "bad_conversation", f"turns must alternate human/gpt starting with human; turn {j} is from {role!r}"
    if GPT not in roles:
        return "bad_conversation", "no 'gpt' answer to supervise"
    return None


def _answer_problem(sample: dict[str, Any]) -> tuple[str, str] | None:
    for j, turn in enumerate(sample["conversations"]):
        if turn["from"] == GPT and j > 0 and not turn["value"].strip():
            return ("bad_conversation", f"gpt turn {j} is empty: it would supervise only the end-of-turn token; "
                    "write the answer or drop the turn pair")
    return None


def structural_problems(sample: Any) -> list[tuple[str, str]]:
    """The sample's structural errors as ``(category, detail)``; empty when training can use it."""
    shape = _shape_problem(sample)
    if shape is not None:
        return [shape]  # the other checks need the shape
    roles = role_problem([turn["from"] for turn in sample["conversations"]])
    return [p for p in (roles, _placeholder_problem(sample), _answer_problem(sample)) if p is not None]


def structural_warnings(sample: Any) -> list[tuple[str, str]]:
    """What training repairs by itself, as ``(category, detail)``; for a sample :func:`structural_problems`
    found no error in (the caller checks that first)."""
    first = sample["conversations"][0]["from"]
    if first != HUMAN:
        return [("first_turn_not_human", f"first turn is from {first!r}; training drops it (upstream)")]
    return []


def first_problem(records: list[Any]) -> tuple[int, str, str, int] | None:
    """``(index, category, detail, n_bad)`` of the first structurally bad sample in ``records`` (or None); a
    store's ``problem_codes`` column answers without decoding the good samples."""
    codes = getattr(records, "problem_codes", None)
    if codes is not None:
        bad = [int(i) for i in codes.nonzero()[0]]
        return None if not bad else (bad[0], *structural_problems(records[bad[0]])[0], len(bad))
    first, n_bad = None, 0
    for i, sample in enumerate(records):
        problems = structural_problems(sample)
        if problems:
            n_bad += 1
            if first is None:
                first = (i, *problems[0])
    return None if first is None else (*first, n_bad)


def check_structure(records: list[Any], data_path: str) -> None:
    """:func:`fail` on the first structurally bad sample (:mod:`llava.data.sample_check`), with the count."""
    found = first_problem(records)
    if found is None:
        return
    index, category, detail, n_bad = found
    sample = records[index]
    sid = sample.get("id", f"#{index}") if isinstance(sample, dict) else f"#{index}"
    fail(f"{n_bad} sample(s) in {data_path} cannot be trained on; the first: {category}: sample id={sid!r} (index "
         f"{index}): {detail}. Fix them (python -m llava.data.doctor lists them all) or pass --skip_bad_samples "
         "True to skip and count them")
