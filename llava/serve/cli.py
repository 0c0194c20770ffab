"""Interactive chat about one image: ``python -m llava.serve.cli --model-path ... --image-file ...``.

Reads user turns from stdin until EOF or an empty line; prints ``ASSISTANT: <answer>`` per turn.
``--permute-image-tokens [--permute-seed S]`` chats with the permutation probe switched on for the
loaded model (:mod:`llava.eval.permutation_report`; nothing is saved).
"""

from __future__ import annotations

import argparse

from transformers import TextStreamer

from llava.mm_utils import background_color_for, load_image, process_images
from llava.model.builder import load_pretrained_model
from llava.serve.inference import default_conv_mode, generate_reply, new_conversation, with_image_tokens
from llava.serve.permutation import add_permutation_args, enable_permutation, parse_checked


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--conv-mode", default=None)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--no-stream", action="store_true", help="print each answer at once instead of streaming")
    p.add_argument("--debug", action="store_true")
    return add_permutation_args(p)


def main(argv: list[str] | None = None) -> None:
    """Run the chat loop (a flag misuse: one line on stderr, exit 2)."""
    args = parse_checked(build_parser(), argv)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, None, load_8bit=args.load_8bit, load_4bit=args.load_4bit,
        device=args.device)
    if args.permute_image_tokens:
        enable_permutation(model, args.permute_seed)
    conv = new_conversation(args.conv_mode or default_conv_mode(tokenizer))
    image = load_image(args.image_file, background_color_for(image_processor))
    images = process_images([image], image_processor, model.config)
    first = True
    while True:
        try:
            query = input(f"{conv.roles[0] or 'USER'}: ")
        except EOFError:
            break
        if not query.strip():
            break
        if first:
            query = with_image_tokens(query, 1, getattr(model.config, "mm_use_im_start_end", False))
            first = False
        conv.append_message(conv.roles[0], query)
        conv.append_message(conv.roles[1], None)
        print(f"{conv.roles[1] or 'ASSISTANT'}: ", end="", flush=True)
        streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        answer = generate_reply(model, tokenizer, conv, images, temperature=args.temperature,
                                max_new_tokens=args.max_new_tokens, streamer=streamer)
        if streamer is None:
            print(answer, flush=True)
        conv.messages[-1][-1] = answer
        if args.debug:
            print({"prompt": conv.get_prompt(tokenizer), "outputs": answer})


if __name__ == "__main__":
    main()
