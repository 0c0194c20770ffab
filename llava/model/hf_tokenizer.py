"""llava-hf interop, text side: chat template, ``<image>`` token, ``LlavaProcessor``, tokenizer files.

Token parity. Training and ``run_llava`` tokenize a prompt chunk by chunk between the ``<image>`` placeholders
(:func:`llava.mm_utils.tokenizer_image_token`), so the text right after an image is tokenized as if it began the
string. ``LlavaProcessor`` tokenizes the whole prompt with ``<image>`` as an added token. For sentencepiece-style
tokenizers with a ``Metaspace`` pre-tokenizer that prepends ``▁`` only at the very start (``prepend_scheme='first'``,
transformers' non-legacy Llama tokenizer) the two differ by one ``▁`` after each image that is not followed by a
space (``<image>\\nWhat``: ours ``▁ <0x0A>``, the processor's ``<0x0A>``). :func:`align_image_token` makes the
exported tokenizer put that ``▁`` back: ``<image>`` becomes a *normalized* added token and a ``Replace`` normalizer
inserts a space after an ``<image>`` that is followed by something else than a space or another ``<image>``; the
pre-tokenizer turns it into the ``▁`` ours has. Tokenizers that already agree (legacy Llama, byte-level BPE such as
Qwen2) are left as they are. :func:`parity_problem` checks a tokenizer on :data:`PARITY_PROBES`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token

IMAGE_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                        "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")
IMAGE_SPACE_PATTERN = f"{DEFAULT_IMAGE_TOKEN}(?!{DEFAULT_IMAGE_TOKEN})(?=[^ ])"
"""An ``<image>`` followed by a character that is neither a space nor the start of another ``<image>``."""
PARITY_PROBES = (
    "<image>\nWhat is red?", "USER: <image>\nWhat is red? ASSISTANT:", "What is <image> red?", "What<image>red",
    "What is red?\n<image>", "What is red? <image>", "<image>", "a <image>  b", "<image><image>\nTwo images",
    "ASSISTANT: a circle</s>USER: <image>\nAnd blue? ASSISTANT:", "ASSISTANT: a</s>USER: b",
    "[INST] <image>\nx [/INST]",
)
"""Texts around the image placeholder (start, middle, end, next to newlines, spaces, ``</s>``, other images)."""


class HfInteropError(ValueError):
    """A checkpoint the other format cannot express; the message names what and says what to do."""


def vicuna_chat_template() -> str:
    """LLaVA-1.5's vicuna_v1 prompt format (``llava.conversation``) as a Jinja chat template.

    ``system + ' ' + 'USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: ... ASSISTANT:'``; a message's
    content may be a string or a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts
    (images first, each as ``<image>\\n``). A leading system message replaces the default system prompt.
    """
    conv = get_conv_template("vicuna_v1")
    user, assistant = (json.dumps(r) for r in conv.roles)
    sep, sep2 = json.dumps(conv.sep), json.dumps(conv.sep2)
    image = json.dumps(DEFAULT_IMAGE_TOKEN + "\n")
    return (
        "{%- macro render(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
        "{%- for part in content if part['type'] == 'image' -%}{{ " + image + " }}{%- endfor -%}"
        "{{ content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
        "{%- endif -%}{%- endmacro -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = render(messages[0]['content']) -%}"
        "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = " + json.dumps(conv.system) + " -%}"
        "{%- set turns = messages -%}{%- endif -%}"
        "{{- system + " + sep + " -}}"
        "{%- for message in turns -%}"
        "{%- if message['role'] == 'user' -%}{{- " + user + " + ': ' + render(message['content']) + " + sep + " -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- " + assistant + " + ': ' + render(message['content']) + " + sep2 + " -}}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + assistant + " + ':' -}}{%- endif -%}"
    )


# ------------------------------------------------------------------------------------------------ token parity
def whole_text_ids(text: str, tokenizer: Any, image_id: int, add_special_tokens: bool = True) -> list[int]:
    """``text`` tokenized in one piece (as ``LlavaProcessor`` does), each ``<image>`` token as our -200."""
    ids = tokenizer(text, add_special_tokens=add_special_tokens).input_ids
    return [IMAGE_TOKEN_INDEX if t == image_id else t for t in ids]


def parity_problem(hf_tokenizer: Any, ours_tokenizer: Any, probes: tuple[str, ...] = PARITY_PROBES) -> str | None:
    """The first probe ``hf_tokenizer`` (whole text, ``<image>`` a token) tokenizes differently from
    ``ours_tokenizer`` (chunks between placeholders, as training does), with both id lists; None when all agree."""
    image_id = hf_tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    for text in probes:
        ours = tokenizer_image_token(text, ours_tokenizer)
        theirs = whole_text_ids(text, hf_tokenizer, image_id)
        if ours != theirs:
            return f"{text!r}: training gives {ours}, the processor {theirs}"
    return None


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "normalizer"):
        raise TypeError(f"{type(tokenizer).__name__} is not backed by the tokenizers library")
    return backend


def align_image_token(tokenizer: Any) -> None:
    """Make ``tokenizer`` (with ``<image>`` added) tokenize the text after each ``<image>`` as a fresh start, like
    training's chunks: ``<image>`` normalized, a space inserted after it (see the module docstring)."""
    from tokenizers import AddedToken, Regex, normalizers

    backend = _backend(tokenizer)
    insert = normalizers.Replace(Regex(IMAGE_SPACE_PATTERN), DEFAULT_IMAGE_TOKEN + " ")
    backend.normalizer = insert if backend.normalizer is None else normalizers.Sequence([insert, backend.normalizer])
    tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=True)], special_tokens=True)


def add_image_token(tokenizer: Any, rows: int, model_path: str) -> tuple[int, bool, bool]:
    """Add ``<image>`` (last token) to ``tokenizer`` unless it has one, aligned with training's tokenization.

    Returns (its id, whether the embeddings grow a row for it, whether :func:`align_image_token` was needed).
    """
    from tokenizers import AddedToken

    ours = copy.deepcopy(tokenizer)
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if image_id > rows:
        raise HfInteropError(f"{model_path}: the tokenizer has more tokens than the embeddings have rows ({rows}); "
                             "resize the model's embeddings to the tokenizer first.")
    aligned = parity_problem(tokenizer, ours) is not None
    if aligned:
        align_image_token(tokenizer)
    problem = parity_problem(tokenizer, ours)
    if problem:
        raise HfInteropError(f"{model_path}: the tokenizer cannot be exported so that LlavaProcessor gives training's "
                             f"ids ({problem}); keep using this codebase's tools for this checkpoint.")
    return image_id, image_id == rows, aligned


# ------------------------------------------------------------------------------------------------ processor
def hf_processor(tokenizer: Any, image_processor: Any, config: Any, tower_config: Any, select_strategy: str) -> Any:
    """A ``LlavaProcessor`` reproducing our preprocessing (``image_aspect_ratio`` pad -> ``do_pad``), with the
    tokenizer's chat template."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    settings = image_processor.to_dict()
    images = LlavaImageProcessorPil(do_pad=getattr(config, "image_aspect_ratio", None) == "pad",
                                    **{k: settings[k] for k in IMAGE_PROCESSOR_KEYS if k in settings})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=tower_config.patch_size,
                          vision_feature_select_strategy=select_strategy, chat_template=tokenizer.chat_template,
                          image_token=DEFAULT_IMAGE_TOKEN, num_additional_image_tokens=1)


def check_saved_processor(folder: Path, ours_tokenizer: Any, model_path: str) -> None:
    """Reload the processor saved in ``folder`` and check its tokenizer against training's on the probes."""
    from transformers import AutoProcessor

    problem = parity_problem(AutoProcessor.from_pretrained(folder).tokenizer, ours_tokenizer)
    if problem:
        raise HfInteropError(f"{model_path}: the saved LlavaProcessor tokenizes differently from training ({problem})")


# ------------------------------------------------------------------------------------------------ hf -> ours
def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def _without_token(cfg: dict, token: str, token_id: int) -> None:
    cfg.get("added_tokens_decoder", {}).pop(str(token_id), None)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        value = cfg.get(key)
        if isinstance(value, list):
            cfg[key] = [t for t in value if t != token]
        elif isinstance(value, dict):
            cfg[key] = {k: t for k, t in value.items() if t != token}


def _without_alignment(data: dict, token_id: int | None) -> None:
    """tokenizer.json without the ``<image>`` token (``token_id``) and without :func:`align_image_token`'s
    normalizer step (it only matters while ``<image>`` is a token)."""
    if token_id is not None:
        data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] != token_id]
    norm = data.get("normalizer") or {}

    def is_insert(step: dict) -> bool:
        return step.get("type") == "Replace" and step.get("pattern") == {"Regex": IMAGE_SPACE_PATTERN}

    if is_insert(norm):
        data["normalizer"] = None
    elif norm.get("type") == "Sequence" and any(is_insert(s) for s in norm["normalizers"]):
        rest = [s for s in norm["normalizers"] if not is_insert(s)]
        data["normalizer"] = rest[0] if len(rest) == 1 else {"type": "Sequence", "normalizers": rest}


def keeps_chat_template(tokenizer: Any) -> bool:
    """Whether our checkpoint keeps the llava-hf folder's chat template: not our vicuna_v1 one (our prompts come
    from ``llava.conversation``) and one that renders string contents (what our tools pass it)."""
    from jinja2 import TemplateError

    template = getattr(tokenizer, "chat_template", None)
    if not template or template == vicuna_chat_template():
        return False
    probe = DEFAULT_IMAGE_TOKEN + "\nprobe"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False,
                                             add_generation_prompt=True)
    except (TemplateError, ValueError, TypeError, KeyError):
        return False
    return isinstance(text, str) and probe in text


def save_tokenizer(tokenizer: Any, folder: Path, drop_id: int | None, keep_template: bool) -> None:
    """Save the llava-hf (tokenizers-backed) ``tokenizer`` for our format, with its chat template only if
    ``keep_template``, without ``<image>`` when ``drop_id`` is its id (removed from the saved files with the
    alignment normalizer, checked by reloading). transformers loads a llava folder's tokenizer as
    ``TokenizersBackend`` and so it is saved."""
    from transformers import AutoTokenizer

    tokenizer = copy.deepcopy(tokenizer)
    if not keep_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)

    def edit_config(cfg: dict) -> None:
        cfg.pop("processor_class", None)
        if drop_id is not None:
            _without_token(cfg, DEFAULT_IMAGE_TOKEN, drop_id)

    _edit_json(folder / "tokenizer_config.json", edit_config)
    if drop_id is not None:
        _edit_json(folder / "tokenizer.json", lambda data: _without_alignment(data, drop_id))
        reloaded = AutoTokenizer.from_pretrained(folder)
        if len(reloaded) != drop_id or DEFAULT_IMAGE_TOKEN in reloaded.get_vocab():
            raise RuntimeError(f"could not remove {DEFAULT_IMAGE_TOKEN} from the tokenizer saved in {folder}")
