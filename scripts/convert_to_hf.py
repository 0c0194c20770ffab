"""Convert one of our LLaVA checkpoints to a llava-hf (``LlavaForConditionalGeneration``) folder.

``python scripts/convert_to_hf.py --model-path CKPT --output OUT``

``OUT`` gets the model, its ``LlavaProcessor`` (tokenizer with an added ``<image>`` token, a
``LlavaImageProcessor`` that pads to a square like ``image_aspect_ratio pad``, the tokenizer's chat
template or else LLaVA-1.5's vicuna_v1 one) and the generation config; load it with
``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``. Multi-layer
features map onto ``vision_feature_layer`` lists; an add-on llava-hf cannot express is refused with one
line naming it (exit 2). See :mod:`llava.model.hf_interop` for the key mapping and the new token's
embedding rows.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="our full LLaVA checkpoint folder (or a LoRA one)")
    parser.add_argument("--model-base", default=None, help="base LLM, for a LoRA or projector-only checkpoint")
    parser.add_argument("--output", required=True, help="new folder for the llava-hf model and processor")
    args = parser.parse_args(argv)

    from llava.model.hf_interop import HfInteropError, convert_to_hf

    try:
        result = convert_to_hf(args.model_path, args.output, args.model_base)
    except HfInteropError as err:
        print(f"convert_to_hf: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    for note in result.notes:
        print(f"[convert_to_hf] note: {note}")
    print(f"[convert_to_hf] llava-hf folder written to {result.output}")


if __name__ == "__main__":
    main()
