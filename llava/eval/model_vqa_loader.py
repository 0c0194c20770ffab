"""Batched VQA answer generation with upstream LLaVA's interface.

    python -m llava.eval.model_vqa_loader --model-path CKPT [--model-base BASE] --image-folder DIR \\
        --question-file questions.jsonl --answers-file answers.jsonl [--conv-mode llava_v1] \\
        [--temperature 0] [--top_p P] [--num_beams 1] [--max_new_tokens 128] \\
        [--num-chunks N --chunk-idx I] [--batch-size 8] [--device cpu] \\
        [--permute-image-tokens [--permute-seed 0]]

The question file is JSONL, one ``{"question_id", "image", "text", ...}`` per line (upstream's eval
format; ``image`` is relative to ``--image-folder``). ``--num-chunks/--chunk-idx`` split the
questions into contiguous chunks so several processes (GPUs) can share the work; concatenate the
chunk outputs in chunk order (``scripts/v1_5/eval/merge_chunks.sh``) to get the single-process file.
Every referenced image is checked before the model is loaded: a missing one is an error that names
the question and the path. Greedy decoding (``--temperature 0``) is deterministic and batched with
left padding; each line of the answers file is ``{question_id, prompt, text, answer_id, model_id,
metadata}``. ``--permute-image-tokens`` switches the permutation probe on for the loaded model (each
image's tokens shuffled after the projector, seeded by ``--permute-seed`` and the image's pixels, so
the answers do not depend on ``--batch-size`` or chunking); compare two runs with
:mod:`llava.eval.permutation_report`.

The shared helpers here (:func:`read_questions`, :func:`get_chunk`, :func:`check_images`,
:func:`generate_batch`, :func:`answer_record`) also back :mod:`llava.eval.model_vqa` and
:mod:`llava.eval.model_vqa_science`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from llava.mm_utils import background_color_for, get_model_name_from_path, load_image, process_images
from llava.serve.inference import (
    default_conv_mode,
    generation_kwargs,
    new_conversation,
    pad_token_id,
    prompt_ids,
    stop_string,
    with_image_tokens,
)
from llava.serve.permutation import (
    add_permutation_args,
    check_permutation_args,
    enable_permutation,
    parse_checked,
)
from llava.utils.jsonl import parse_jsonl

ANSWER_ID_NAMESPACE = uuid.UUID("6f1c1e0a-3c5e-4e55-9a57-6c1a9b0e7d21")


def read_questions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Questions from a JSONL file (a JSON list is accepted too); a clear error for a missing/bad file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--question-file {str(p)!r} does not exist")
    text = p.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return parse_jsonl(text, f"--question-file {str(p)!r}")


def split_list(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Split ``items`` into ``n`` contiguous chunks of ceil(len/n) (upstream's split; trailing chunks may be empty)."""
    if n < 1:
        raise ValueError(f"--num-chunks must be >= 1, got {n}")
    size = max(1, math.ceil(len(items) / n))
    chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
    return chunks + [[] for _ in range(n - len(chunks))]


def get_chunk(items: Sequence[Any], n: int, k: int) -> list[Any]:
    """Chunk ``k`` of ``n`` (see :func:`split_list`)."""
    if not 0 <= k < n:
        raise ValueError(f"--chunk-idx {k} must be in [0, {n}) for --num-chunks {n}")
    return split_list(items, n)[k]


def check_images(questions: Sequence[dict[str, Any]], image_folder: str | os.PathLike,
                 key: str = "image", id_key: str = "question_id") -> None:
    """Raise ``FileNotFoundError`` naming every question whose image is missing under ``image_folder``."""
    missing = []
    for q in questions:
        if q.get(key):
            path = Path(image_folder) / q[key]
            if not path.is_file():
                missing.append(f"question {q.get(id_key)!r}: {path}")
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{len(missing)} question(s) reference images that do not exist under --image-folder "
            f"{str(image_folder)!r}:\n  {shown}\nCheck --image-folder (image paths are relative to it) "
            "or regenerate the question file.")


def build_prompt(text: str, conv_mode: str, tokenizer: Any, has_image: bool,
                 mm_use_im_start_end: bool) -> tuple[torch.Tensor, str | None]:
    """(1-D prompt ids with -200 at the image, the template's stop string) for one question."""
    conv = new_conversation(conv_mode)
    query = with_image_tokens(text, 1 if has_image else 0, mm_use_im_start_end)
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return prompt_ids(conv, tokenizer)[0], stop_string(conv)


def left_pad(seqs: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors to one (B, L) batch; returns (ids, attention_mask)."""
    length = max(int(s.numel()) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, length - s.numel():] = s
        mask[i, length - s.numel():] = 1
    return ids, mask


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[torch.Tensor], images: torch.Tensor | None,
                   stop: str | None, temperature: float = 0.0, top_p: float | None = None, num_beams: int = 1,
                   max_new_tokens: int = 128) -> list[str]:
    """Generate one answer per prompt (left-padded batch); greedy when ``temperature`` is 0."""
    ids, mask = left_pad(prompts, pad_token_id(tokenizer))
    ids, mask = ids.to(model.device), mask.to(model.device)
    kwargs = generation_kwargs(tokenizer, ids, stop, temperature, top_p, num_beams, max_new_tokens,
                               attention_mask=mask)
    if images is not None:
        images = images.to(device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        out = model.generate(ids, images=images, **kwargs)
    texts = []
    for row in tokenizer.batch_decode(out, skip_special_tokens=True):
        if stop and stop in row:
            row = row[: row.index(stop)]
        texts.append(row.strip())
    return texts


def answer_record(question_id: Any, prompt: str, text: str, model_id: str,
                  metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """One answers-file line; ``answer_id`` is derived from model and question (stable across runs)."""
    answer_id = uuid.uuid5(ANSWER_ID_NAMESPACE, f"{model_id}/{question_id}").hex[:22]
    return {"question_id": question_id, "prompt": prompt, "text": text, "answer_id": answer_id,
            "model_id": model_id, "metadata": metadata or {}}


def load_model(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(tokenizer, model, image_processor, conv_mode) from ``--model-path/--model-base/--conv-mode``."""
    from llava.model.builder import load_pretrained_model

    model_path = os.path.expanduser(args.model_path)
    tokenizer, model, processor, _ = load_pretrained_model(model_path, args.model_base, None, device=args.device)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {model_path!r} has neither a pad nor an eos token; cannot batch")
    return tokenizer, model, processor, args.conv_mode or default_conv_mode(tokenizer)


def open_answers(path: str | os.PathLike) -> Any:
    """Create the answers file's folder and open it for writing."""
    p = Path(os.path.expanduser(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.open("w")


def eval_model(args: argparse.Namespace) -> None:
    """Answer this chunk's questions and write the answers file."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    questions = get_chunk(read_questions(args.question_file), args.num_chunks, args.chunk_idx)
    check_images(questions, args.image_folder)
    check_permutation_args(args)
    tokenizer, model, processor, conv_mode = load_model(args)
    if args.permute_image_tokens:
        enable_permutation(model, args.permute_seed)
    model_id = get_model_name_from_path(os.path.expanduser(args.model_path))
    start_end = bool(getattr(model.config, "mm_use_im_start_end", False))
    started = time.monotonic()
    with open_answers(args.answers_file) as out:
        batches = range(0, len(questions), args.batch_size)
        for b in tqdm(batches, desc=f"vqa chunk {args.chunk_idx}/{args.num_chunks}", unit="batch"):
            batch = questions[b:b + args.batch_size]
            with_img = [bool(q.get("image")) for q in batch]
            if any(with_img) and not all(with_img):
                # Mixed batch: answer one by one so text-only questions get no image.
                groups = [[q] for q in batch]
            else:
                groups = [batch]
            for group in groups:
                built = [build_prompt(q["text"], conv_mode, tokenizer, bool(q.get("image")), start_end)
                         for q in group]
                images = None
                if group[0].get("image"):
                    pad = background_color_for(processor)
                    pil = [load_image(Path(args.image_folder) / q["image"], pad) for q in group]
                    images = process_images(pil, processor, model.config)
                texts = generate_batch(model, tokenizer, [p for p, _ in built], images, built[0][1],
                                       args.temperature, args.top_p, args.num_beams, args.max_new_tokens)
                for q, text in zip(group, texts):
                    out.write(json.dumps(answer_record(q["question_id"], q["text"], text, model_id)) + "\n")
                out.flush()
            if getattr(args, "progress_label", None):
                print(eval_progress_line(args.progress_label, b + len(batch), len(questions), started), flush=True)


def eval_progress_line(label: str, done: int, total: int, started: float) -> str:
    """``[progress] LABEL 64/600 questions elapsed 0:12 ETA 1:41``."""
    from llava.train.progress import PREFIX, clock

    elapsed = time.monotonic() - started
    eta = clock(elapsed / done * (total - done)) if done else "?"
    return f"{PREFIX} {label} {done}/{total} questions elapsed {clock(elapsed)} ETA {eta}"


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Upstream's generator flags shared by model_vqa, model_vqa_loader and model_vqa_science."""
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-folder", default="")
    p.add_argument("--question-file", required=True)
    p.add_argument("--answers-file", required=True)
    p.add_argument("--conv-mode", default=None, help="template name; default llava_v1 (chat_template if the "
                   "tokenizer has one)")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--progress-label", default=None,
                   help="print '[progress] LABEL k/N questions, elapsed, ETA' lines to stdout (the demo shows them)")
    return add_permutation_args(p)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (a flag misuse: one line on stderr, exit 2)."""
    args = parse_checked(build_parser(), argv)
    eval_model(args)


if __name__ == "__main__":
    main()
