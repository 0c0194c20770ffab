"""Write upstream's ``mm_projector.bin`` from a full LLaVA checkpoint.

``python scripts/extract_mm_projector.py --model-path CKPT --output mm_projector.bin``

Reads only the tensors that travel with the projector — ``model.mm_projector.*`` and the modules
the add-on registry says travel with it for this ``config.json`` (e.g. ``model.mm_projector_norm.*``,
``model.mm_registers.*``), plus the token embeddings when the model was trained with
``mm_use_im_start_end`` — from ``model.safetensors`` / ``pytorch_model.bin`` (sharded or not) and
saves them with their original keys, which is what ``--pretrain_mm_mlp_adapter`` and
``load_pretrained_model`` expect. ``--mm-addon-modules`` names external add-on modules the
checkpoint was trained with.
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


def projector_prefixes(model_path: str, addon_modules: str | None = None) -> tuple[list[str], list[str]]:
    """(key prefixes of the projector-side modules, exact embedding keys) for this checkpoint's config."""
    from transformers import AutoConfig

    import llava.model  # noqa: F401  (registers the llava_* configs)
    from llava.model.addons.registry import AddonRegistry

    config = AutoConfig.from_pretrained(model_path)
    pipeline = AddonRegistry.for_config(config, addon_modules).pipeline(config)
    prefixes = [f"model.{name}." for name in ("mm_projector", *pipeline.travelling_module_names())]
    embeddings = ["model.embed_tokens.weight"] if getattr(config, "mm_use_im_start_end", False) else []
    return prefixes, embeddings


def extract_mm_projector(model_path: str, output: str, addon_modules: str | None = None) -> dict[str, torch.Tensor]:
    """Collect the projector tensors of ``model_path`` and save them atomically to ``output``."""
    from llava.utils.atomic import atomic_torch_save

    prefixes, embeddings = projector_prefixes(model_path, addon_modules)

    def wanted(k: str) -> bool:
        return k in embeddings or any(k.startswith(p) for p in prefixes)

    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(model_path):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for k in f.keys():
                    if wanted(k):
                        state[k] = f.get_tensor(k)
        else:
            shard = torch.load(path, map_location="cpu", weights_only=True)
            state.update({k: v for k, v in shard.items() if wanted(k)})
    if not any(k.startswith(prefixes[0]) for k in state):
        raise ValueError(f"{model_path} has no model.mm_projector.* weights; is it a LLaVA checkpoint?")
    atomic_torch_save(state, output)
    return state


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="full LLaVA checkpoint folder")
    parser.add_argument("--output", required=True, help="path of the mm_projector.bin to write")
    parser.add_argument("--mm-addon-modules", default=None,
                        help="external add-on modules the checkpoint was trained with (comma-separated)")
    args = parser.parse_args(argv)
    state = extract_mm_projector(args.model_path, args.output, args.mm_addon_modules)
    print(f"[extract] wrote {len(state)} tensors to {args.output}: {', '.join(sorted(state))}")


if __name__ == "__main__":
    main()
