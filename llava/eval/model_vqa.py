"""Unbatched VQA answer generation (upstream's ``model_vqa``): one question at a time, same files as the loader.

    python -m llava.eval.model_vqa --model-path CKPT --image-folder DIR --question-file q.jsonl \\
        --answers-file a.jsonl [--conv-mode llava_v1] [--temperature 0.2] [--num-chunks N --chunk-idx I]

Questions are JSONL ``{"question_id", "image", "text"}``; a question without ``image`` is answered
text-only. Output lines: ``{question_id, prompt, text, answer_id, model_id, metadata}``. Use
:mod:`llava.eval.model_vqa_loader` for batched greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm import tqdm

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


def eval_model(args: argparse.Namespace) -> None:
    """Answer this chunk's questions one by one and write the answers file."""
    questions = get_chunk(read_questions(args.question_file), args.num_chunks, args.chunk_idx)
    check_images(questions, args.image_folder)
    tokenizer, model, processor, conv_mode = load_model(args)
    model_id = get_model_name_from_path(os.path.expanduser(args.model_path))
    start_end = bool(getattr(model.config, "mm_use_im_start_end", False))
    with open_answers(args.answers_file) as out:
        for q in tqdm(questions, desc="model_vqa", unit="q"):
            has_image = bool(q.get("image"))
            ids, stop = build_prompt(q["text"], conv_mode, tokenizer, has_image, start_end)
            images = None
            if has_image:
                pad = background_color_for(processor)
                image = load_image(Path(args.image_folder) / q["image"], pad)
                images = process_images([image], processor, model.config)
            text = generate_batch(model, tokenizer, [ids], images, stop, args.temperature, args.top_p,
                                  args.num_beams, args.max_new_tokens)[0]
            out.write(json.dumps(answer_record(q["question_id"], q["text"], text, model_id)) + "\n")
            out.flush()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (upstream's default temperature 0.2)."""
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.set_defaults(temperature=0.2, max_new_tokens=1024)
    eval_model(p.parse_args(argv))


if __name__ == "__main__":
    main()
