"""Merge a LoRA LLaVA checkpoint into its base LLM and save a standalone model.

``python scripts/merge_lora_weights.py --model-path CKPT_LORA --model-base BASE_LLM --save-model-path OUT``

``CKPT_LORA`` is a folder written by ``finetune_lora.sh`` (PEFT adapter + ``non_lora_trainables.bin``
+ ``config.json``; intermediate ``checkpoint-N`` folders work too). The merged model is written to a
temporary folder next to ``OUT`` and renamed into place, so ``OUT`` is never left half-written.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = ("float32", "float16", "bfloat16")


def merge_lora(model_path: str, model_base: str, save_model_path: str, dtype: str = "float32") -> str:
    """Merge the LoRA folder ``model_path`` into ``model_base`` and save it to ``save_model_path``."""
    import torch

    from llava.model.builder import load_pretrained_model
    from llava.utils.atomic import atomic_path
    from llava.utils.generation_config import sanitize_generation_config

    if os.path.exists(save_model_path) and os.listdir(save_model_path):
        raise FileExistsError(
            f"--save-model-path {save_model_path!r} exists and is not empty; choose a new folder."
        )
    tokenizer, model, _, _ = load_pretrained_model(
        model_path, model_base, None, device="cpu", torch_dtype=getattr(torch, dtype)
    )
    for line in sanitize_generation_config(getattr(model, "generation_config", None)):
        print(f"[merge] generation_config fixed: {line}")
    with atomic_path(save_model_path) as tmp:  # replaces an empty folder, checked above
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return save_model_path


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="LoRA checkpoint folder")
    parser.add_argument("--model-base", required=True, help="base LLM the LoRA run started from")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged model")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights")
    args = parser.parse_args(argv)
    out = merge_lora(args.model_path, args.model_base, args.save_model_path, args.dtype)
    print(f"[merge] merged model saved to {out}")


if __name__ == "__main__":
    main()
