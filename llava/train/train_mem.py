"""DeepSpeed/launcher entry point: ``train()`` with FlashAttention-2 when importable, else SDPA.

``deepspeed llava/train/train_mem.py --deepspeed scripts/zero2.json ...`` (upstream's name). The
attention choice is logged once; no attention monkey patches are involved.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

if __name__ == "__main__" and not __package__:  # run as a script: make `llava` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llava.train.train import flag_value, hard_exit_after_cpu_deepspeed, train

logger = logging.getLogger("llava.train")


def pick_attn_implementation() -> str:
    """``flash_attention_2`` when ``flash_attn`` is importable and CUDA is present, else ``sdpa``."""
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    import torch

    return "flash_attention_2" if torch.cuda.is_available() else "sdpa"


def main() -> None:
    """Pick the attention implementation, say which, and train."""
    attn = pick_attn_implementation()
    chosen = flag_value(sys.argv[1:], "--attn_implementation")
    if os.environ.get("LOCAL_RANK", "0") == "0":
        reason = "flash_attn is importable" if attn == "flash_attention_2" else "flash_attn not available"
        if chosen:
            attn, reason = chosen, "--attn_implementation"
        print(f"[llava] attention implementation: {attn} ({reason})", flush=True)
    try:
        train(attn_implementation=attn)
    except SystemExit as stop:  # a one-line user error (exit 2): the same clean exit as a finished run
        hard_exit_after_cpu_deepspeed(stop.code if isinstance(stop.code, int) else 1)
        raise
    hard_exit_after_cpu_deepspeed()


if __name__ == "__main__":
    main()
