"""Seed 001's Quick Start runs as written, with only ``llava.contrastive.`` put before each import.

The code block is read from the seed document itself (``../shared/seeds``). Nothing is downloaded: the
three hub names are replaced by tiny local models of the same kinds (CLIP, sentence-transformers, a
Qwen2 chat LLM), and the two placeholders the seed leaves to the reader (``your_dataset``, ``image``)
are a small synthetic dataset and one of its images.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
MODULES = ("core", "data", "train", "llm_integration")


def quick_start() -> str:
    found = sorted(SEEDS.glob("001_*.txt"))
    if not found:
        pytest.skip(f"seed 001 is not beside the repository ({SEEDS})")
    text = found[0].read_text(encoding="utf-8")
    block = re.search(r"## Quick Start\s*```python\n(.*?)```", text, re.S)
    assert block, "seed 001 has no Quick Start code block"
    return block.group(1)


def with_prefix(code: str) -> str:
    """``from core import ...`` -> ``from llava.contrastive.core import ...`` (nothing else changes)."""
    for name in MODULES:
        code = re.sub(rf"^(\s*)from {name} import", rf"\1from llava.contrastive.{name} import", code, flags=re.M)
    return code


def test_seed001_quick_start_runs_with_the_package_prefix(tiny_clip, tiny_qwen2, tmp_path):
    from llava.contrastive.data import ImageTextDataset, synthetic_shapes
    from llava.contrastive.tiny import build_tiny_sentence_transformer

    code = with_prefix(quick_start())
    imports = re.findall(r"^\s*from (\S+) import", code, flags=re.M)
    assert imports and all(m.startswith("llava.contrastive.") for m in imports), imports
    local = {"openai/clip-vit-base-patch32": tiny_clip, "Qwen/Qwen2.5-1.5B-Instruct": tiny_qwen2,
             "sentence-transformers/all-MiniLM-L6-v2": build_tiny_sentence_transformer(tmp_path / "st")}
    for hub_name, path in local.items():
        assert f'"{hub_name}"' in code
        code = code.replace(f'"{hub_name}"', repr(path))
    records = synthetic_shapes(12, seed=0)
    namespace = {"your_dataset": ImageTextDataset(records, captions_per_image=1), "image": records[0].image}
    exec(compile(code, "seed001_quick_start", "exec"), namespace)  # the seed's own code
    assert len(namespace["history"]) >= 1
    output = namespace["output"]
    assert isinstance(output, list) and len(output) == 1 and isinstance(output[0], str)
