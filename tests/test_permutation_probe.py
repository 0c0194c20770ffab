"""The permutation probe: --permute_image_tokens (add-on), the inference flags and the report.

(a) the add-on on tiny models: a per-image permutation of the unpermuted tokens, fixed by seed and
pixels (not by batching), after compression, coordinate tokens kept in place, CLS kept first, off =
unchanged; (b) model_vqa_loader with and without --permute-image-tokens on a generated spatial
benchmark, then permutation_report checked against a hand count; (c) eval_spatial --permuted-answers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llava.eval import ablation_table, eval_spatial, permutation_report, spatial_scoring
from llava.eval.eval_textvqa import normalize_answer
from llava.model.addons.base import read_config, write_config
from llava.model.addons.permute import Permute, image_permutation, pixel_digest
from llava.model.addons.registry import BUILTIN_ADDONS, AddonRegistry
from llava.serve import permutation
from llava.testing.tiny_llava import build_tiny_llava

REPO = Path(__file__).resolve().parents[1]
PERM = dict(permute_image_tokens=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _encode(model, images):
    with torch.no_grad():
        return model.encode_image_blocks(images)


def _recover(permuted: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Index of the plain row each permuted row equals (asserts each matches exactly one)."""
    match = (permuted[:, None, :] == plain[None, :, :]).all(-1)
    assert match.sum(0).tolist() == [1] * plain.shape[0] and match.sum(1).tolist() == [1] * plain.shape[0]
    return match.float().argmax(1)


def _set_seed(model, seed: int) -> None:
    permutation.enable_permutation(model, seed)


@pytest.fixture(scope="module")
def plain(tiny_llama, tiny_clip):
    return build_tiny_llava(tiny_llama, tiny_clip)


@pytest.fixture(scope="module")
def permuted(tiny_llama, tiny_clip):
    return build_tiny_llava(tiny_llama, tiny_clip, **PERM)


def test_tokens_are_a_seeded_per_image_permutation(plain, permuted, images):
    assert permuted.config.permute_seed == 0
    base, _ = _encode(plain, images)
    perm, _ = _encode(permuted, images)
    for i in range(2):
        order = _recover(perm[i], base[i])
        assert not torch.equal(order, torch.arange(16))
        assert torch.equal(order, image_permutation(0, pixel_digest(images[i]), 16))
    assert not torch.equal(_recover(perm[0], base[0]), _recover(perm[1], base[1]))  # per image
    assert torch.equal(_encode(permuted, images)[0], perm)  # same seed: identical
    _set_seed(permuted, 1)
    try:
        other, _ = _encode(permuted, images)
        assert not torch.equal(_recover(other[0], base[0]), _recover(perm[0], base[0]))
    finally:
        _set_seed(permuted, 0)


def test_permutation_does_not_depend_on_batching(plain, permuted, images):
    base_pair, perm_pair = _encode(plain, images)[0], _encode(permuted, images)[0]
    base_one, perm_one = _encode(plain, images[1:])[0], _encode(permuted, images[1:])[0]
    assert torch.equal(_recover(perm_one[0], base_one[0]), _recover(perm_pair[1], base_pair[1]))
    torch.testing.assert_close(perm_one[0], perm_pair[1])


def test_off_is_bit_identical_to_a_model_without_the_addon(plain, permuted, tiny_llama, tiny_clip, images):
    without = build_tiny_llava(tiny_llama, tiny_clip)
    without.get_model().addon_registry = AddonRegistry(tuple(a for a in BUILTIN_ADDONS if a is not Permute))
    assert not any(f.name in vars(plain.config) for f in dataclasses.fields(Permute.Config))
    assert not hasattr(plain.get_model(), "mm_permute_probe")
    ids = torch.tensor([[1, -200, 20, 21, 22]])
    with torch.no_grad():
        ref = without(input_ids=ids, images=images[:1]).logits
        assert torch.equal(plain(input_ids=ids, images=images[:1]).logits, ref)
        assert not torch.equal(permuted(input_ids=ids, images=images[:1]).logits, ref)  # it does reach the LLM
    assert permuted.state_dict().keys() == plain.state_dict().keys()  # the probe module holds nothing
    flipped = dataclasses.replace(read_config(permuted.config, Permute), permute_image_tokens=False)
    write_config(permuted.config, flipped)
    try:
        assert torch.equal(_encode(permuted, images)[0], _encode(plain, images)[0])  # hook idle when off
    finally:
        _set_seed(permuted, 0)


def test_permutation_acts_on_compressed_tokens(tiny_llama, tiny_clip, images):
    comp = dict(compression_after_projection=True, final_spatial_size=4)
    base, _ = _encode(build_tiny_llava(tiny_llama, tiny_clip, **comp), images)
    perm, _ = _encode(build_tiny_llava(tiny_llama, tiny_clip, **comp, **PERM), images)
    assert perm.shape == base.shape == (2, 4, base.shape[2])
    orders = [_recover(perm[i], base[i]) for i in range(2)]
    assert all(torch.equal(o, image_permutation(0, pixel_digest(images[i]), 4)) for i, o in enumerate(orders))
    assert any(not torch.equal(o, torch.arange(4)) for o in orders)


def test_interleaved_coordinates_stay_in_place(tiny_llama, tiny_clip, llama_tokenizer, images):
    flags = dict(interleave=True, interleave_sparsity=2)
    models = [build_tiny_llava(tiny_llama, tiny_clip, **flags, **extra) for extra in ({}, PERM)]
    for m in models:
        m.initialize_vision_tokenizer(SimpleNamespace(), llama_tokenizer)
    (base, lay0), (perm, lay1) = (_encode(m, images) for m in models)
    assert perm.shape == base.shape and torch.equal(lay0.is_feature, lay1.is_feature)
    assert torch.equal(lay0.rows, lay1.rows) and torch.equal(lay0.cols, lay1.cols)
    feat = lay0.is_feature
    assert torch.equal(perm[:, ~feat], base[:, ~feat])  # coordinate tokens: same place, same vectors
    for i in range(2):
        order = _recover(perm[i, feat], base[i, feat])
        assert torch.equal(order, image_permutation(0, pixel_digest(images[i]), 16))


def test_cls_stays_first(tiny_llama, tiny_clip, images):
    base, _ = _encode(build_tiny_llava(tiny_llama, tiny_clip, mm_vision_select_feature="cls_patch"), images)
    perm, _ = _encode(build_tiny_llava(tiny_llama, tiny_clip, mm_vision_select_feature="cls_patch", **PERM), images)
    assert perm.shape[1] == 17 and torch.equal(perm[:, 0], base[:, 0])
    order = _recover(perm[0, 1:], base[0, 1:])
    assert torch.equal(order, image_permutation(0, pixel_digest(images[0]), 16))


def test_flags_and_config():
    reg = AddonRegistry()
    with pytest.raises(ValueError, match=r"^--permute_seed has no effect without --permute_image_tokens True"):
        reg.enabled_from_args(SimpleNamespace(permute_seed=3))
    on = dict(reg.enabled_from_args(SimpleNamespace(permute_image_tokens=True, permute_seed=7)))
    assert on[Permute] == Permute.Config(True, 7)
    assert Permute.from_args(SimpleNamespace(permute_image_tokens=True)).permute_seed == 0
    assert Permute.tokens(Permute.Config(True, 0), 576) == 576 and BUILTIN_ADDONS[-1] is Permute


# ---- (b) model_vqa_loader end to end, then the report ----

def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _texts(path: Path) -> dict[str, str]:
    return {str(r["question_id"]): r["text"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, tiny_llama, tiny_clip, llama_tokenizer) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("perm_e2e")
    ckpt = root / "ckpt"
    build_tiny_llava(tiny_llama, tiny_clip, seed=11).save_pretrained(ckpt)
    llama_tokenizer.save_pretrained(ckpt)
    data = root / "data"
    gen = _run("llava.data.spatial", "--output_dir", str(data), "--num_train", "0", "--num_test", "3",
               "--image_size", "32", "--grid", "2", "--seed", "3")
    assert gen.returncode == 0, gen.stderr[-3000:]
    common = ["--model-path", str(ckpt), "--image-folder", str(data), "--question-file",
              str(data / "test_questions.jsonl"), "--temperature", "0", "--max_new_tokens", "4", "--batch-size", "4",
              "--device", "cpu"]
    files = {}
    for name, extra in (("plain", []), ("perm", ["--permute-image-tokens"]),
                        ("perm_again", ["--permute-image-tokens", "--permute-seed", "0"])):
        files[name] = root / f"{name}.jsonl"
        res = _run("llava.eval.model_vqa_loader", *common, *extra, "--answers-file", str(files[name]))
        assert res.returncode == 0, res.stderr[-3000:]
    return SimpleNamespace(ckpt=ckpt, annotations=data / "test_answers.jsonl", **files)


def test_loader_and_report_match_a_hand_count(e2e):
    a, b = _texts(e2e.plain), _texts(e2e.perm)
    assert _texts(e2e.perm_again) == b  # same seed: identical answers
    assert not (ckpt_config := json.loads((e2e.ckpt / "config.json").read_text())).get("permute_image_tokens")
    assert "permute_seed" not in ckpt_config  # nothing saved into the checkpoint
    refs = {str(r["question_id"]): r for r in map(json.loads, e2e.annotations.read_text().splitlines())}
    n = len(refs)  # every question the generator wrote (the count depends on the benchmark's design)
    assert a.keys() == b.keys() == refs.keys() and n >= 10
    changed = sum(normalize_answer(a[q]) != normalize_answer(b[q]) for q in a)
    hits = sum(normalize_answer(a[q]) == normalize_answer(refs[q]["answer"]) for q in a)
    hits_p = sum(normalize_answer(b[q]) == normalize_answer(refs[q]["answer"]) for q in a)
    res = _run("llava.eval.permutation_report", "--answers", str(e2e.plain), "--permuted-answers", str(e2e.perm),
               "--annotations", str(e2e.annotations))
    assert res.returncode == 0, res.stderr[-3000:]
    print(res.stdout)
    acc, acc_p = 100 * hits / n, 100 * hits_p / n
    assert (f"| overall | {n} | {changed} | {100 * changed / n:.1f} | {acc:.1f} | {acc_p:.1f} | "
            f"{acc - acc_p:.1f} |") in res.stdout
    bare = permutation_report.main(["--answers", str(e2e.plain), "--permuted-answers", str(e2e.perm)])
    assert bare["rows"]["overall"] == {"n": n, "changed": changed, "changed_pct": pytest.approx(100 * changed / n),
                                       "accuracy": None, "permuted_accuracy": None, "drop": None}
    assert list(bare["rows"]) == ["overall"]


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_report_on_hand_written_files(tmp_path, capsys):
    ann = _jsonl(tmp_path / "ann.jsonl", [
        {"question_id": "q0", "answer": "red", "category": "colour"},
        {"question_id": "q1", "answer": "blue", "category": "colour"},
        {"question_id": "q2", "answer": "two", "category": "counting"},
        {"question_id": "q3", "answer": "three", "category": "counting"}])
    a = _jsonl(tmp_path / "a.jsonl", [{"question_id": k, "text": v} for k, v in
                                      {"q0": "Red.", "q1": "blue", "q2": "2", "q3": "one", "q4": "x"}.items()])
    b = _jsonl(tmp_path / "b.jsonl", [{"question_id": k, "text": v} for k, v in
                                      {"q0": "red", "q1": "green", "q2": "three", "q3": "One"}.items()])
    # changed (benchmark match): q1, q2; correct without: q0 q1 q2, with: q0
    r = permutation_report.main(["--answers", a, "--permuted-answers", b, "--annotations", ann])["rows"]
    assert r["overall"] == {"n": 4, "changed": 2, "changed_pct": 50.0, "accuracy": 75.0, "permuted_accuracy": 25.0,
                            "drop": 50.0}
    assert (r["colour"]["accuracy"], r["colour"]["permuted_accuracy"], r["colour"]["changed"]) == (100.0, 50.0, 1)
    assert (r["counting"]["accuracy"], r["counting"]["permuted_accuracy"], r["counting"]["changed"]) == (50.0, 0.0, 1)
    out = capsys.readouterr().out
    assert "| overall | 4 | 2 | 50.0 | 75.0 | 25.0 | 50.0 |" in out
    assert "warning: 1 question(s) only in --answers (left out)" in out


def test_eval_spatial_prints_the_report(e2e, capsys):
    m = eval_spatial.main(["--annotation-file", str(e2e.annotations), "--result-file", str(e2e.plain),
                           "--permuted-answers", str(e2e.perm)])
    out = capsys.readouterr().out
    refs = [json.loads(line) for line in e2e.annotations.read_text().splitlines()]
    assert "| category | n | model acc (%) |" in out and f"Permutation probe: {len(refs)} questions" in out
    report = permutation_report.compare_files(e2e.plain, e2e.perm, e2e.annotations)
    assert m["permutation"] == report and permutation_report.format_report(report) in out
    assert list(report["rows"]) == [*sorted({r["category"] for r in refs}), "overall"]
    assert sum(r["n"] for c, r in report["rows"].items() if c != "overall") == len(refs)
    assert report["rows"]["overall"]["accuracy"] == pytest.approx(m["accuracy"]["overall"])


def test_chat_cli_with_permutation(e2e):
    from llava.mm_utils import load_image, process_images
    from llava.model.builder import load_pretrained_model
    from llava.serve.inference import generate_reply, new_conversation, with_image_tokens

    image = next((e2e.annotations.parent / "images").glob("test_*.png"))
    proc = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", str(e2e.ckpt), "--image-file",
                           str(image), "--temperature", "0", "--max-new-tokens", "6", "--no-stream", "--device", "cpu",
                           "--permute-image-tokens", "--permute-seed", "4"], input="Where is it?\n",
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok, model, processor, _ = load_pretrained_model(str(e2e.ckpt), None, device="cpu")
    pixels = process_images([load_image(image)], processor, model.config)
    plain, _ = _encode(model, pixels)
    permutation.enable_permutation(model, 4)
    perm, _ = _encode(model, pixels)  # the loaded model really permutes once switched on
    assert torch.equal(_recover(perm[0], plain[0]), image_permutation(4, pixel_digest(pixels[0]), 16))
    conv = new_conversation("llava_v1")
    conv.append_message(conv.roles[0], with_image_tokens("Where is it?", 1, False))
    conv.append_message(conv.roles[1], None)
    expected = generate_reply(model, tok, conv, pixels, temperature=0.0, max_new_tokens=6)
    assert proc.stdout.split("ASSISTANT: ", 1)[1].rsplit("USER:", 1)[0].strip() == expected


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    from llava.eval import model_vqa_loader
    from llava.serve import cli

    for main, args in ((model_vqa_loader.main, ["--model-path", "x", "--question-file", "q", "--answers-file", "a"]),
                       (cli.main, ["--model-path", "x", "--image-file", "y"])):
        with pytest.raises(SystemExit) as err:
            main([*args, "--permute-seed", "3"])
        assert err.value.code == 2
        assert capsys.readouterr().err.strip().endswith(
            "error: --permute-seed has no effect without --permute-image-tokens: add that flag or drop --permute-seed.")
    with pytest.raises(SystemExit) as err:
        permutation_report.main(["--answers", str(tmp_path / "nope.jsonl"), "--permuted-answers", "b.jsonl"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and "--answers" in lines[0] and "nope.jsonl" in lines[0]


def test_scoring_imports_run_one_way():
    """permutation_report and the shared scoring pieces do not import eval_spatial (which imports them)."""
    code = ("import sys, llava.eval.permutation_report, llava.eval.spatial_scoring, llava.eval.ablation_table; "
            "print('llava.eval.eval_spatial' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"
    assert eval_spatial.is_correct is spatial_scoring.is_correct  # the CLI's names still resolve


def _hits(category: str, flags: list[bool], start: int = 0) -> dict[str, tuple[str, bool]]:
    return {f"{category}{start + i}": (category, f) for i, f in enumerate(flags)}


def test_permutation_drops_and_explanation():
    """A model that loses half its position answers under permutation and keeps its colour answers."""
    cats = ("colour", "absolute_position")
    normal = {**_hits("colour", [True] * 16 + [False] * 4), **_hits("absolute_position", [True] * 20)}
    permuted = {**_hits("colour", [True] * 16 + [False] * 4),
                **_hits("absolute_position", [True] * 10 + [False] * 10)}
    drops = ablation_table.permutation_drops(normal, permuted, cats)
    assert drops["colour"].drop == 0.0 and drops["colour"].p_value == 1.0 and drops["colour"].n == 20
    pos = drops["absolute_position"]
    assert pos.drop == pytest.approx(50.0) and pos.p_value == pytest.approx(2 / 2 ** 10)  # McNemar b=10, c=0
    assert 0 < pos.low < 50 < pos.high <= 100
    assert drops["overall"].n == 40 and drops["overall"].drop == pytest.approx(25.0)
    assert pos.markdown() == f"+50.0 [{pos.low:+.1f}, {pos.high:+.1f}], p=0.002"
    majority = {**_hits("colour", [True] * 10 + [False] * 10), **_hits("absolute_position", [False] * 20)}
    lines = ablation_table.explain([ablation_table.VariantResult("vanilla", normal, permuted, 3.25)], majority,
                                   cats, "colour", ("absolute_position",))
    assert lines[0].startswith("- **vanilla**: absolute_position 100.0% vs 0.0% (+100.0 points, p<0.001: "
                               "clearly above)")
    assert "costs absolute_position 50.0 points (p < 0.01): it uses where the image tokens are" in lines[0]
    assert "colour (position-free control) +0.0 points, p=1 (not significant, as it should be)" in lines[0]
    assert "3.2x the text embeddings' mean norm" in lines[0]
    assert "n = 20 questions per category" in lines[-1] and "±22 points" in lines[-1]
    # a colour answer that moves under permutation is flagged; no significant position drop is said so
    shuffled_colour = {**permuted, **_hits("colour", [False] * 20)}
    flagged = ablation_table.explain([ablation_table.VariantResult("v", normal, shuffled_colour)], majority, cats,
                                     "colour", ("absolute_position",))[0]
    assert "NOT ≈ 0" in flagged
    same = ablation_table.explain([ablation_table.VariantResult("v", normal, normal)], majority, cats, "colour",
                                  ("absolute_position",))[0]
    assert "costs no position category significantly" in same
