"""Convert a llava-hf (``LlavaForConditionalGeneration``) folder to our LLaVA checkpoint format.

``python scripts/convert_from_hf.py --hf-path LLAVA_HF_FOLDER --output OUT [--image-aspect-ratio pad]``

Works for folders written by ``scripts/convert_to_hf.py`` (the round trip gives back bit-identical
weights) and for llava-hf releases (old or new weight layout): ``OUT`` loads with
``load_pretrained_model`` and finetunes like any of our checkpoints. The vision tower is saved as a
CLIP folder ``OUT/vision_tower`` that ``mm_vision_tower`` points to (an absolute path: update it if
the folder moves). What our format cannot express is refused with one line naming it (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-path", required=True, help="llava-hf folder (model + processor), local")
    parser.add_argument("--output", required=True, help="new folder for our checkpoint")
    parser.add_argument("--image-aspect-ratio", default=None, choices=("pad", "square"),
                        help="our image_aspect_ratio (default: pad when the processor pads, else square; "
                             "LLaVA-1.5 was trained with pad although llava-1.5-hf's processor does not pad)")
    args = parser.parse_args(argv)

    from llava.model.hf_interop import HfInteropError, convert_from_hf

    try:
        result = convert_from_hf(args.hf_path, args.output, args.image_aspect_ratio)
    except HfInteropError as err:
        print(f"convert_from_hf: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    for note in result.notes:
        print(f"[convert_from_hf] note: {note}")
    print(f"[convert_from_hf] checkpoint written to {result.output}")


if __name__ == "__main__":
    main()
