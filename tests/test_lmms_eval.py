"""lmms-eval's own CLI runs ``--model llava_beyond`` (our entry point) on a tiny local task.

The task folder is written here: a JSONL dataset with PNG images, one generation task (exact_match)
and one multiple-choice task (acc over loglikelihoods), passed with ``--include_path``. The tiny
checkpoint has an add-on flag on (2D RoPE). The log-likelihoods lmms-eval logged are checked against
a batch-of-one forward pass computed here, and its multiple-choice accuracy against their argmax.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

from llava.conversation import get_conv_template  # noqa: E402
from llava.mm_utils import load_image, process_images, tokenizer_image_token  # noqa: E402
from llava.model.builder import load_pretrained_model  # noqa: E402
from llava.testing.tiny_llava import build_tiny_llava  # noqa: E402

pytestmark = pytest.mark.slow

QUESTIONS = ["what color is the circle?", "how many shapes are there?", "what is in the top left?",
             "is there a red square?"]
CHOICES = ["red", "blue square", "three", "yes"]
UTILS = '''
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_mc_target(doc):
    return doc["label"]
'''
GEN_TASK = """
task: tiny_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: data.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  until: ["\\n"]
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
MC_TASK = """
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data.jsonl
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: !function utils.doc_to_mc_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

BROKEN_TASKS = {  # tasks whose metric crashes inside lmms-eval 0.7.3 (the README lists them as not working)
    "tiny_mc_mutual_info": MC_TASK.replace("task: tiny_mc", "task: tiny_mc_mutual_info").replace(
        "metric: acc\n", "metric: acc_mutual_info\n"),
    "tiny_perplexity": MC_TASK.replace("task: tiny_mc", "task: tiny_perplexity").replace(
        "output_type: multiple_choice", "output_type: loglikelihood").replace(
        "doc_to_choice: !function utils.doc_to_choice\n", "").replace(
        "doc_to_target: !function utils.doc_to_mc_target", "doc_to_target: answer").replace(
        "metric: acc\n    aggregation: mean\n    higher_is_better: true",
        "metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false"),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """utils.py, the two task YAMLs and a 4-document JSONL dataset with its images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("lmms_tasks")
    rows = []
    for i, question in enumerate(QUESTIONS):
        pixels = torch.Generator().manual_seed(i)
        img = (torch.rand(24 + 8 * i, 32, 3, generator=pixels) * 255).to(torch.uint8).numpy()
        path = root / f"img{i}.png"
        Image.fromarray(img).save(path)
        rows.append({"image": str(path), "question": question, "answer": CHOICES[i], "choices": CHOICES,
                     "label": i % len(CHOICES)})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "utils.py").write_text(UTILS)
    (root / "tiny_vqa.yaml").write_text(textwrap.dedent(GEN_TASK))
    (root / "tiny_mc.yaml").write_text(textwrap.dedent(MC_TASK))
    for name, text in BROKEN_TASKS.items():
        (root / f"{name}.yaml").write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def checkpoint(tiny_llama, tiny_clip, llama_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A full tiny LLaVA checkpoint with 2D RoPE on (the flag lives in its config.json)."""
    path = tmp_path_factory.mktemp("lmms_ckpt")
    model = build_tiny_llava(tiny_llama, tiny_clip, twoD_vision_embedding=True)
    model.save_pretrained(path)
    llama_tokenizer.save_pretrained(path)
    return str(path)


def _run_cli(task_dir: Path, checkpoint: str, out_dir: Path, tasks: str = "tiny_vqa,tiny_mc",
             module: str = "lmms_eval") -> subprocess.CompletedProcess:
    """lmms-eval's CLI (``module``: ``lmms_eval``, or our checking wrapper ``llava.eval.lmms_eval_run``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(out_dir / "hf_home"), "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", module, "--model", "llava_beyond",
           "--model_args", f"pretrained={checkpoint},conv_template=vicuna_v1,device=cpu",
           "--tasks", tasks, "--include_path", str(task_dir), "--batch_size", "2",
           "--limit", "4", "--log_samples", "--output_path", str(out_dir / "results")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _prompt(doc: dict) -> str:
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\n" + doc["question"])
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def _reference_nll(model, tokenizer, pixels: torch.Tensor, doc: dict, choice: str) -> float:
    """-log p(" choice" | prompt, image) from one unpadded forward pass (the spliced logits read from the end)."""
    prompt = _prompt(doc)
    ctx = tokenizer_image_token(prompt, tokenizer)
    full = tokenizer_image_token(prompt + " " + choice, tokenizer)
    assert full[: len(ctx)] == ctx
    cont = torch.tensor(full[len(ctx):])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full]), images=pixels).logits[0]
    logprobs = logits[-len(cont) - 1: -1].log_softmax(-1)
    return -float(logprobs.gather(-1, cont[:, None]).sum())


def _reference_answer(model, tokenizer, pixels: torch.Tensor, doc: dict) -> str:
    """Greedy answer to one unbatched prompt (4 new tokens, cut at the first newline)."""
    ids = tokenizer_image_token(_prompt(doc), tokenizer, return_tensors="pt")[None]
    out = model.generate(ids, images=pixels, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out, skip_special_tokens=True)[0].split("\n")[0].strip()


def _samples(results_dir: Path, task: str) -> list[dict]:
    """The per-document records lmms-eval logged for ``task`` (``--log_samples``), in document order."""
    files = results_dir.rglob(f"*_samples_{task}.jsonl")
    lines = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    return sorted(lines, key=lambda s: s["doc_id"])


def test_lmms_eval_cli_runs_llava_beyond(task_dir: Path, checkpoint: str, tmp_path: Path) -> None:
    """Through our checking wrapper, which runs lmms-eval's own CLI with the same arguments: a run whose tasks
    all report passes the wrapper (exit 0, no error line), and its numbers are checked against a reference."""
    proc = _run_cli(task_dir, checkpoint, tmp_path, module="llava.eval.lmms_eval_run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "error:" not in proc.stderr
    results_dir = tmp_path / "results"
    found = sorted(results_dir.rglob("*_results.json"))
    assert found, f"no results file under {results_dir}:\n{proc.stderr[-3000:]}"
    report = json.loads(found[-1].read_text())
    assert report["config"]["model_backend"].startswith("llava.eval.lmms_eval_model.LlavaBeyond")
    results = report["results"]
    assert 0.0 <= results["tiny_vqa"]["exact_match,none"] <= 1.0
    assert 0.0 <= results["tiny_mc"]["acc,none"] <= 1.0

    docs = [json.loads(line) for line in (task_dir / "data.jsonl").read_text().splitlines()]
    tokenizer, model, processor, _ = load_pretrained_model(checkpoint, None, device="cpu")
    assert model.config.twoD_vision_embedding
    mc, gen = _samples(results_dir, "tiny_mc"), _samples(results_dir, "tiny_vqa")
    assert [s["doc_id"] for s in mc] == [s["doc_id"] for s in gen] == list(range(len(docs)))
    hits = 0
    for doc, mc_sample, gen_sample in zip(docs, mc, gen):
        pixels = process_images([load_image(doc["image"])], processor, model.config)
        # Each choice's logged score is its negated log-likelihood; lmms-eval picks the argmin.
        logged = [float(resp[0]) for resp in mc_sample["filtered_resps"]]
        expected = [_reference_nll(model, tokenizer, pixels, doc, c) for c in CHOICES]
        assert logged == pytest.approx(expected, rel=1e-4, abs=1e-4)
        best = min(range(len(CHOICES)), key=expected.__getitem__)
        assert mc_sample["acc"] == float(best == doc["label"])
        hits += best == doc["label"]
        assert gen_sample["filtered_resps"] == _reference_answer(model, tokenizer, pixels, doc)
    assert results["tiny_mc"]["acc,none"] == pytest.approx(hits / len(docs))


def test_wrapper_fails_where_lmms_eval_exits_0_on_a_crashed_task(task_dir, checkpoint, tmp_path):
    """The metrics the README lists as broken crash inside lmms-eval 0.7.3: lmms-eval itself exits 0, our wrapper
    exits 1 with one line naming each task (both broken tasks in one run of each)."""
    tasks = ",".join(BROKEN_TASKS)
    plain = _run_cli(task_dir, checkpoint, tmp_path / "plain", tasks=tasks)
    assert plain.returncode == 0 and "Traceback" in plain.stderr, plain.stderr[-3000:]
    wrapped = _run_cli(task_dir, checkpoint, tmp_path / "wrapped", tasks=tasks, module="llava.eval.lmms_eval_run")
    errors = [line for line in wrapped.stderr.splitlines() if line.startswith("error: lmms-eval task")]
    assert wrapped.returncode == 1 and len(errors) == len(BROKEN_TASKS), wrapped.stderr[-3000:]
    assert all(sum(repr(task) in e for e in errors) == 1 for task in BROKEN_TASKS), errors
