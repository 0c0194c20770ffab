"""ScienceQA-style multiple-choice generation (upstream's ``model_vqa_science``).

    python -m llava.eval.model_vqa_science --model-path CKPT --image-folder DIR \\
        --question-file llava_test_CQM-A.json --answers-file a.jsonl [--single-pred-prompt] \\
        [--conv-mode llava_v1] [--num-chunks N --chunk-idx I]

The question file is a JSON list (JSONL works too) in LLaVA conversation format:
``{"id", "image"?, "conversations": [{"from": "human", "value": question with options}, ...]}``. The
first human turn is the question; ``<image>`` is stripped from it and put back in front when the
sample has an image. ``--single-pred-prompt`` appends "Answer with the option's letter from the
given choices directly." Output lines: ``{question_id: id, prompt, text, answer_id, model_id,
metadata}``; score them with :mod:`llava.eval.eval_science_qa`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.model_vqa_loader import (
    add_common_args,
    answer_record,
    build_prompt,
    check_images,
    generate_batch,
    get_chunk,
    load_model,
    open_answers,
    read_questions,
)
from llava.mm_utils import background_color_for, get_model_name_from_path, load_image, process_images

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def question_text(sample: dict, single_pred_prompt: bool) -> str:
    """The first human turn without ``<image>``, plus the letter instruction when asked."""
    turns = sample.get("conversations") or []
    if not turns:
        raise ValueError(f"ScienceQA sample {sample.get('id')!r} has no conversations")
    text = turns[0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return f"{text}\n{SINGLE_PRED_PROMPT}" if single_pred_prompt else text


def eval_model(args: argparse.Namespace) -> None:
    """Answer this chunk's problems and write the answers file."""
    samples = get_chunk(read_questions(args.question_file), args.num_chunks, args.chunk_idx)
    check_images(samples, args.image_folder, id_key="id")
    tokenizer, model, processor, conv_mode = load_model(args)
    model_id = get_model_name_from_path(os.path.expanduser(args.model_path))
    start_end = bool(getattr(model.config, "mm_use_im_start_end", False))
    with open_answers(args.answers_file) as out:
        for s in tqdm(samples, desc="model_vqa_science", unit="q"):
            text = question_text(s, args.single_pred_prompt)
            has_image = bool(s.get("image"))
            ids, stop = build_prompt(text, conv_mode, tokenizer, has_image, start_end)
            images = None
            if has_image:
                pad = background_color_for(processor)
                image = load_image(Path(args.image_folder) / s["image"], pad)
                images = process_images([image], processor, model.config)
            answer = generate_batch(model, tokenizer, [ids], images, stop, args.temperature, args.top_p,
                                    args.num_beams, args.max_new_tokens)[0]
            out.write(json.dumps(answer_record(s["id"], text, answer, model_id)) + "\n")
            out.flush()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--single-pred-prompt", action="store_true")
    p.set_defaults(max_new_tokens=128)
    eval_model(p.parse_args(argv))


if __name__ == "__main__":
    main()
