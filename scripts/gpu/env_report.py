"""GPU check part ``env``: GPU name, driver, torch/CUDA and library versions -> ``OUT/env.txt``."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from gpu_common import parse_part_args, part_parser, write_result

PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "huggingface_hub",
            "numpy", "pillow", "sentencepiece", "protobuf", "tqdm", "deepspeed", "flash-attn")


def version(dist: str) -> str:
    """The installed version of a distribution, or ``missing``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def nvidia_smi() -> str:
    """``nvidia-smi``'s name/driver/memory query, or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi: not found"
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm"
    try:
        res = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "nvidia-smi: timed out"
    return f"nvidia-smi ({query}): {res.stdout.strip() or res.stderr.strip()}"


def main() -> None:
    a = parse_part_args(part_parser(__doc__.splitlines()[0]))
    import torch

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    lines = [f"python: {sys.version.split()[0]} ({platform.platform()})", f"gpu: {gpu}",
             f"gpu count: {torch.cuda.device_count() if cuda else 0}", nvidia_smi(),
             f"torch: {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
             f"{torch.backends.cudnn.version() if cuda else 'n/a'}, bf16 supported: "
             f"{torch.cuda.is_bf16_supported() if cuda else 'n/a'}"]
    if cuda:
        props = torch.cuda.get_device_properties(0)
        lines.append(f"gpu memory: {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}, "
                     f"{props.multi_processor_count} SMs")
    lines += [f"{p}: {version(p)}" for p in PACKAGES]
    text = "\n".join(lines) + "\n"
    Path(a.out, "env.txt").write_text(text)
    print(text)
    ok = a.device == "cpu" or cuda
    write_result(a.out, "env", ok, dict(gpu=gpu, torch=torch.__version__, cuda=str(torch.version.cuda),
                                        transformers=version("transformers"), peft=version("peft")),
                 "" if ok else "--device cuda but torch sees no GPU")


if __name__ == "__main__":
    main()
