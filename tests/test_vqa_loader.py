"""model_vqa_loader: --num-chunks 2 over two processes == one process; missing images fail clearly; siblings run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval.model_vqa_loader import check_images, get_chunk, left_pad, split_list

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llama, tiny_clip, llama_tokenizer) -> str:
    from llava.testing.tiny_llava import build_tiny_llava

    out = tmp_path_factory.mktemp("vqa_ckpt")
    build_tiny_llava(tiny_llama, tiny_clip, seed=11).save_pretrained(out)
    llama_tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def spatial(tmp_path_factory) -> dict[str, str]:
    from llava.data.spatial import generate

    return generate(tmp_path_factory.mktemp("vqa_data"), num_train=0, num_test=3, image_size=32, grid=2, seed=3)


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, "--device", "cpu", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_helpers():
    assert split_list(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_list([1], 3) == [[1], [], []]
    assert get_chunk(list(range(5)), 2, 1) == [3, 4]
    with pytest.raises(ValueError, match="--chunk-idx"):
        get_chunk([1], 2, 2)
    import torch

    ids, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_two_chunks_equal_one_process(tmp_path, checkpoint, spatial):
    common = ["--model-path", checkpoint, "--image-folder", spatial["image_folder"], "--question-file",
              spatial["test_questions"], "--temperature", "0", "--max_new_tokens", "5", "--batch-size", "4"]
    single = _run("llava.eval.model_vqa_loader", *common, "--answers-file", str(tmp_path / "all.jsonl"))
    assert single.returncode == 0, single.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, "-m", "llava.eval.model_vqa_loader", "--device", "cpu", *common,
                               "--answers-file", str(tmp_path / f"chunk{k}.jsonl"), "--num-chunks", "2",
                               "--chunk-idx", str(k)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    merged = tmp_path / "merged.jsonl"
    res = subprocess.run(["bash", str(REPO / "scripts/v1_5/eval/merge_chunks.sh"), str(merged),
                          str(tmp_path / "chunk0.jsonl"), str(tmp_path / "chunk1.jsonl")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    one, two = _answers(tmp_path / "all.jsonl"), _answers(merged)
    n_questions = len(Path(spatial["test_questions"]).read_text().splitlines())
    assert len(one) == n_questions and len(_answers(tmp_path / "chunk0.jsonl")) == (n_questions + 1) // 2
    assert [(a["question_id"], a["text"], a["answer_id"]) for a in one] == \
        [(a["question_id"], a["text"], a["answer_id"]) for a in two]
    assert set(one[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert "tqdm" not in one[0] and "vqa chunk" in single.stderr  # progress bar on stderr


def test_missing_image_is_a_clear_error(tmp_path, checkpoint, spatial):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": "x1", "image": "images/nope.png", "text": "Where?"}) + "\n")
    res = _run("llava.eval.model_vqa_loader", "--model-path", checkpoint, "--image-folder", spatial["image_folder"],
               "--question-file", str(q), "--answers-file", str(tmp_path / "a.jsonl"))
    assert res.returncode != 0
    assert "question 'x1'" in res.stderr and "nope.png" in res.stderr and "--image-folder" in res.stderr
    with pytest.raises(FileNotFoundError, match="1 question"):
        check_images([{"question_id": 1, "image": "missing.png"}], tmp_path)


def test_model_vqa_and_science(tmp_path, checkpoint, spatial):
    qs = Path(spatial["test_questions"]).read_text().splitlines()[:2]
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(qs) + "\n")
    res = _run("llava.eval.model_vqa", "--model-path", checkpoint, "--image-folder", spatial["image_folder"],
               "--question-file", str(q), "--answers-file", str(tmp_path / "a.jsonl"), "--temperature", "0",
               "--max_new_tokens", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_answers(tmp_path / "a.jsonl")) == 2
    image = json.loads(qs[0])["image"]
    sqa = tmp_path / "sqa.json"
    sqa.write_text(json.dumps([
        {"id": "p1", "image": image, "conversations": [{"from": "human", "value": "<image>\nWhich? A. x B. y"},
                                                      {"from": "gpt", "value": "A"}]},
        {"id": "p2", "conversations": [{"from": "human", "value": "Text only? A. x B. y"}]}]))
    res = _run("llava.eval.model_vqa_science", "--model-path", checkpoint, "--image-folder", spatial["image_folder"],
               "--question-file", str(sqa), "--answers-file", str(tmp_path / "s.jsonl"), "--single-pred-prompt",
               "--max_new_tokens", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    out = _answers(tmp_path / "s.jsonl")
    assert [a["question_id"] for a in out] == ["p1", "p2"]
    assert out[0]["prompt"].endswith("Answer with the option's letter from the given choices directly.")
