"""The demo's real-LLM path at test size: ``demo.sh --llm smollm2 --quick --variants vanilla``.

Two stage-1 steps against the frozen SmolLM2-135M-Instruct, one LoRA stage-2 step in its ChatML template,
then evaluation through ``model_vqa_loader --model-base``: the report names the LLM and says it is a smoke
test, and the stage-2 output is a LoRA folder whose base is the session's conversion.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_smollm2_demo_vanilla(smollm2_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = dict(os.environ, LLAVA_SKIP_INSTALL="1")
    res = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--llm", "smollm2", "--quick", "--variants",
                          "vanilla", "--llm_dir", smollm2_dir, "--output_dir", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    md = (out / "ablation.md").read_text()
    assert md.splitlines()[0].startswith("# Spatial benchmark ablation (CPU demo, SmolLM2-135M-Instruct) — SMOKE")
    assert "| vanilla |" in md and "FAILED" not in md and "pretrained SmolLM2-135M-Instruct" in md
    assert not (out / "models" / "smollm2").exists()  # --llm_dir: the shared conversion was used
    finetune = out / "runs" / "vanilla" / "finetune"
    adapter = json.loads((finetune / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and Path(adapter["base_model_name_or_path"]).resolve() == Path(smollm2_dir).resolve()
    assert "--version chat_template" in (out / "runs" / "vanilla" / "finetune.log").read_text()
    answers = [json.loads(x) for x in (out / "runs" / "vanilla" / "answers.jsonl").read_text().splitlines()]
    questions = (out / "data" / "test_questions.jsonl").read_text().splitlines()
    assert len(answers) == len(questions) >= 9  # 3 test images: colour, position, counting (+ relative)
    report = json.loads((out / "ablation.json").read_text())
    assert report["size"]["llm"] == "smollm2" and report["rows"][0]["tokens"] == 16


def test_missing_llm_dir_flag_needs_smollm2(tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--llm_dir", str(tmp_path)], cwd=REPO,
                         env=dict(os.environ, LLAVA_SKIP_INSTALL="1"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--llm_dir needs --llm smollm2" in res.stderr
