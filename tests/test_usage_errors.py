"""User errors at launch: one line, printed once (rank 0), exit 2, no traceback, before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _args(tiny_llama: str, tiny_clip: str, data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--data_path", str(data),
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "True", "--report_to", "none", *extra]


def _good_data(tmp_path: Path) -> Path:
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                               {"from": "gpt", "value": "yo"}]}]))
    return data


CASES = {
    "missing data file": (lambda d: d.parent / "absent.json", (), "--data_path '{d}' does not exist or is not a file."),
    "not utf-8": (lambda d: (d.write_bytes(b'[{"id": "\xff"}]'), d)[1], (),
                  "{d} is not UTF-8 text: byte b'\\xff' at offset 9 does not decode"),
    "bad json": (lambda d: (d.write_text('[{"id": 1,'), d)[1], (), "malformed JSON in {d} at line 1 column 11"),
    "bad flag value": (lambda d: d, ("--image_aspect_ratio", "stretch"), "--image_aspect_ratio"),
    # found at launch, not at the sample's first fetch mid-training (a traceback from a DataLoader)
    "speaker not human/gpt": (lambda d: (d.write_text(json.dumps([{"id": "sg", "conversations": [
        {"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]}])), d)[1], (),
        "sample id='sg' (index 0): turn 0 has 'from': 'user'; expected 'human' or 'gpt'"),
    "turns do not alternate": (lambda d: (d.write_text(json.dumps([{"id": "hh", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]}])), d)[1], (),
        "turns must alternate human/gpt starting with human; turn 1 is from 'human'"),
    "no answer": (lambda d: (d.write_text(json.dumps([{"id": "q", "conversations": [
        {"from": "human", "value": "hi"}]}])), d)[1], (), "no 'gpt' answer to supervise"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_exit_2(case: str, tiny_llama: str, tiny_clip: str, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from llava.train.train import train

    make, extra, expected = CASES[case]
    data = make(_good_data(tmp_path))
    monkeypatch.setattr(sys, "argv", ["train.py", *_args(tiny_llama, tiny_clip, data, tmp_path, *extra)])
    with pytest.raises(SystemExit) as err:
        train()
    assert err.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(d=data) in lines[0], lines


@pytest.mark.slow
def test_once_under_two_process_deepspeed(tiny_llama: str, tiny_clip: str, tmp_path: Path) -> None:
    env = dict(ENV, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), str(REPO / "llava/train/train_mem.py"),
           "--deepspeed", str(REPO / "scripts/zero2.json"),
           *_args(tiny_llama, tiny_clip, tmp_path / "absent.json", tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    output = res.stdout + res.stderr
    assert "Traceback" not in output
    lines = [x for x in output.splitlines() if "error: --data_path" in x]
    assert len(lines) == 1, lines


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
