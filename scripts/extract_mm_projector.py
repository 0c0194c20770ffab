"""Write upstream's ``mm_projector.bin`` from a full LLaVA checkpoint.

``python scripts/extract_mm_projector.py --model-path CKPT --output mm_projector.bin``

Reads only the projector tensors (``*mm_projector*``; plus the token embeddings when the model was
trained with ``mm_use_im_start_end``) from ``model.safetensors`` / ``pytorch_model.bin`` (sharded or
not) and saves them with their original keys (``model.mm_projector.0.weight`` ...), which is what
``--pretrain_mm_mlp_adapter`` and ``load_pretrained_model`` expect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _weight_files(model_path: str) -> list[str]:
    for name in WEIGHT_FILES:
        path = os.path.join(model_path, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(model_path, s) for s in shards]
        return [path]
    raise FileNotFoundError(
        f"--model-path {model_path!r} has no full weights ({', '.join(WEIGHT_FILES)}); a projector-only or "
        "LoRA folder already has mm_projector.bin / non_lora_trainables.bin."
    )


def keys_to_match(model_path: str) -> list[str]:
    """``mm_projector`` plus the embeddings when ``mm_use_im_start_end`` was on (upstream's choice)."""
    keys = ["mm_projector"]
    config_path = os.path.join(model_path, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            if json.load(f).get("mm_use_im_start_end", False):
                keys += ["embed_tokens", "transformer.wte"]
    return keys


def extract_mm_projector(model_path: str, output: str) -> dict[str, torch.Tensor]:
    """Collect the projector tensors of ``model_path`` and save them atomically to ``output``."""
    from llava.model.checkpoints import atomic_torch_save

    keys = keys_to_match(model_path)
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(model_path):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for k in f.keys():
                    if any(m in k for m in keys):
                        state[k] = f.get_tensor(k)
        else:
            shard = torch.load(path, map_location="cpu", weights_only=True)
            state.update({k: v for k, v in shard.items() if any(m in k for m in keys)})
    if not any("mm_projector" in k for k in state):
        raise ValueError(f"{model_path} has no '*mm_projector*' weights; is it a LLaVA checkpoint?")
    atomic_torch_save(state, output)
    return state


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="full LLaVA checkpoint folder")
    parser.add_argument("--output", required=True, help="path of the mm_projector.bin to write")
    args = parser.parse_args(argv)
    state = extract_mm_projector(args.model_path, args.output)
    print(f"[extract] wrote {len(state)} tensors to {args.output}: {', '.join(sorted(state))}")


if __name__ == "__main__":
    main()
