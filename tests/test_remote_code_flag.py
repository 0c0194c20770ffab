"""Code runs only from a flag the user typed: a config file asking for ``trust_remote_code`` is refused.

A phase-1 aligner folder whose ``alignment_config.json`` (or a phase-2 folder whose ``llm_config.json``) says
``"trust_remote_code": true`` names a model folder with an ``auto_map`` to Python that touches a marker when
imported. ``scripts/prefix_caption.py`` and ``MultimodalLLM.load`` refuse it with one line naming the file and
the flag, and the marker is never created; with ``--trust_remote_code True`` typed, the code does run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.contrastive.config import RemoteCodeRefusedError

REPO = Path(__file__).resolve().parents[1]


def _remote_model(root: Path) -> tuple[Path, Path]:
    """A model folder whose config's auto_map imports ``evil.py``, which touches the returned marker."""
    folder, marker = root / "remote_model", root / "PWNED"
    folder.mkdir()
    auto_map = {"AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (folder / "evil.py").write_text(
        "import pathlib\nfrom transformers import PretrainedConfig\n"
        f"pathlib.Path({str(marker)!r}).touch()\n\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    return folder, marker


def _aligner_dir(root: Path, model: Path, trust: bool) -> Path:
    out = root / "align"
    out.mkdir()
    import torch

    torch.save({"state_dict": {}, "vision_dim": 4, "text_dim": 4}, out / "aligner.pt")
    (out / "alignment_config.json").write_text(json.dumps({
        "vision_model_name": str(model), "text_model_name": str(model), "trust_remote_code": trust}))
    return out


def _prefix_caption(tmp_path: Path, aligner: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "scripts/prefix_caption.py", "--aligner_dir", str(aligner), "--llm",
                           str(tmp_path / "no_llm"), "--synthetic", "2", "--output_dir", str(tmp_path / "out"),
                           "--device", "cpu", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_prefix_caption_refuses_config_that_asks_for_remote_code(tmp_path: Path) -> None:
    model, marker = _remote_model(tmp_path)
    aligner = _aligner_dir(tmp_path, model, trust=True)
    proc = _prefix_caption(tmp_path, aligner)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr == (
        f"error: {aligner / 'alignment_config.json'} asks for \"trust_remote_code\": true, which a config file "
        f"cannot turn on: pass --trust_remote_code True to run the Python of the models it names, or set it to "
        f"false in {aligner / 'alignment_config.json'}\n")
    assert not marker.exists()


def test_typed_flag_does_run_the_code(tmp_path: Path) -> None:
    """The payload is real and the flag is honoured: typed, the folder's Python is imported."""
    model, marker = _remote_model(tmp_path)
    aligner = _aligner_dir(tmp_path, model, trust=True)
    _prefix_caption(tmp_path, aligner, "--trust_remote_code", "True")  # fails later (no real encoders)
    assert marker.exists()


def test_multimodal_llm_load_refuses_llm_config(tmp_path: Path) -> None:
    from llava.contrastive import MultimodalLLM

    model, marker = _remote_model(tmp_path)
    saved = tmp_path / "caption"
    saved.mkdir()
    (saved / "projector.pt").write_bytes(b"x")
    (saved / "llm_config.json").write_text(json.dumps({"model_name": str(model), "trust_remote_code": True}))
    _aligner_dir(tmp_path, model, trust=False).rename(saved / "aligner")
    with pytest.raises(RemoteCodeRefusedError, match=r"llm_config\.json asks for \"trust_remote_code\": true"):
        MultimodalLLM.load(saved, device="cpu")
    assert not marker.exists()
