"""One-shot query: ``python -m llava.eval.run_llava --model-path ... --image-file a.jpg[,b.jpg] --query ...``."""

from __future__ import annotations

import argparse

from llava.mm_utils import background_color_for, load_image, process_images
from llava.model.builder import load_pretrained_model
from llava.serve.inference import default_conv_mode, generate_reply, new_conversation, with_image_tokens


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--conv-mode", default=None)
    p.add_argument("--sep", default=",")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--device", default=None)
    return p


def eval_model(args: argparse.Namespace) -> str:
    """Answer ``args.query`` about ``args.image_file`` and print the answer."""
    tokenizer, model, image_processor, _ = load_pretrained_model(args.model_path, args.model_base, None,
                                                                 device=args.device)
    files = [f for f in args.image_file.split(args.sep) if f]
    pad = background_color_for(image_processor)
    images = process_images([load_image(f, pad) for f in files], image_processor, model.config)
    conv = new_conversation(args.conv_mode or default_conv_mode(tokenizer))
    query = with_image_tokens(args.query, len(files), getattr(model.config, "mm_use_im_start_end", False))
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    answer = generate_reply(model, tokenizer, conv, images, temperature=args.temperature, top_p=args.top_p,
                            num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    print(answer)
    return answer


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
