"""Scorers on small hand-written answer files with hand-computed expected metrics (edge cases included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import eval_gqa, eval_pope, eval_science_qa, eval_spatial, eval_textvqa
from llava.eval.eval_textvqa import normalize_answer, soft_score


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _results(path: Path, texts: dict) -> str:
    return _jsonl(path, [{"question_id": k, "prompt": "q", "text": v} for k, v in texts.items()])


@pytest.mark.parametrize("raw, expected", [
    ("Yes.", "yes"), ("  NO ", "no"), ("The Two Dogs.", "2 dogs"), ("a cat", "cat"), ("1,000", "1000"),
    ("3.5", "3.5"), ("dont", "don't"), ("t-shirt", "t shirt"), ("Top Left!", "top left"), ("", ""),
    ("none", "0"), ("an apple, please?", "apple please"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_soft_score_hand_computed():
    three = ["cat"] * 3 + ["dog"] * 7
    # leave-one-out: the 3 "cat" left out -> 2/3 each, the 7 others -> 1: (3 * 2/3 + 7) / 10
    assert soft_score("Cat.", three) == pytest.approx(0.9)
    two = ["cat"] * 2 + ["dog"] * 8
    assert soft_score("cat", two) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    assert soft_score("dog", two) == pytest.approx(1.0)
    assert soft_score("", two) == 0.0
    assert soft_score("The Cat", ["cat"]) == 1.0  # single reference: exact match
    with pytest.raises(ValueError):
        soft_score("x", [])


def test_textvqa_file_metrics(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"data": [
        {"question_id": 1, "answers": ["stop"] * 10},
        {"question_id": 2, "answers": ["cat"] * 3 + ["dog"] * 7},
        {"question_id": 3, "answers": ["two"] * 10},
        {"question_id": 4, "answers": ["yes"] * 10},
    ]}))
    res = _results(tmp_path / "res.jsonl", {1: "STOP.", 2: "cat", 3: "2"})  # 4 missing -> 0
    m = eval_textvqa.main(["--annotation-file", str(ann), "--result-file", res])
    assert m["accuracy"] == pytest.approx(100 * (1 + 0.9 + 1 + 0) / 4)
    assert m["missing"] == 1 and m["total"] == 4


def test_pope_hand_computed(tmp_path):
    texts = {"a": "Yes.", "b": "no", "c": "", "d": "No, there is not.", "e": "YES", "f": "Not sure."}
    labels = {"a": "yes", "b": "no", "c": "no", "d": "no", "e": "yes", "f": "yes"}
    # parsed: a yes, b no, c yes (empty), d no, e yes, f no -> TP a,e  FP c  TN b,d  FN f
    ann = _jsonl(tmp_path / "labels.jsonl", [{"question_id": k, "label": v} for k, v in labels.items()])
    m = eval_pope.main(["--annotation-file", ann, "--result-file", _results(tmp_path / "r.jsonl", texts)])["all"]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_annotation_dir_per_category_and_degenerate(tmp_path):
    (tmp_path / "ann").mkdir()
    _jsonl(tmp_path / "ann" / "coco_pope_random.json", [{"question_id": 1, "label": "yes"},
                                                         {"question_id": 2, "label": "no"}])
    _jsonl(tmp_path / "ann" / "coco_pope_adversarial.json", [{"question_id": 3, "label": "no"}])
    q = _jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "category": "random"},
                                      {"question_id": 2, "category": "random"},
                                      {"question_id": 3, "category": "adversarial"}])
    res = _results(tmp_path / "r.jsonl", {1: "yes", 2: "No", 3: "no"})
    m = eval_pope.main(["--annotation-dir", str(tmp_path / "ann"), "--question-file", q, "--result-file", res])
    assert m["random"]["accuracy"] == 1.0 and m["random"]["f1"] == 1.0
    # all-negative category: precision/recall undefined -> 0, accuracy 1, yes ratio 0
    assert m["adversarial"] == pytest.approx({"accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                              "yes_ratio": 0.0, "tp": 0, "fp": 0, "tn": 1, "fn": 0, "total": 1})
    with pytest.raises(KeyError, match="no answer"):
        eval_pope.score_labels([{"question_id": 9, "label": "yes"}], {})
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        eval_pope.pope_metrics(["yes"], ["maybe"])


def test_gqa_exact_match(tmp_path):
    ann = tmp_path / "q.json"
    ann.write_text(json.dumps({"q1": {"answer": "yes"}, "q2": {"answer": "table"}, "q3": {"answer": "no"},
                               "q4": {"answer": "2"}}))
    res = _results(tmp_path / "r.jsonl", {"q1": "Yes.", "q2": "The Table", "q3": "", "q4": "two"})
    m = eval_gqa.main(["--annotation-file", str(ann), "--result-file", res,
                       "--predictions-out", str(tmp_path / "pred.json")])
    assert m["accuracy"] == pytest.approx(75.0) and m["missing"] == 0
    pred = json.loads((tmp_path / "pred.json").read_text())
    assert {"questionId": "q1", "prediction": "yes"} in pred
    rows = [{"question_id": 1, "answer": "red", "category": "colour"},
            {"question_id": 2, "answer": "left", "category": "pos"}]
    assert eval_gqa.score(rows, {"1": "RED"})["per_category"] == {"colour": 100.0, "pos": 0.0}


@pytest.mark.parametrize("text, n, expected", [
    ("B", 3, "B"), ("B.", 3, "B"), ("(C)", 3, "C"), ("A. a cat", 2, "A"), ("C) dog", 3, "C"),
    ("The answer is D.", 4, "D"), ("", 3, None), ("E", 3, None), ("I am not sure", 4, None), ("b", 3, None),
])
def test_science_qa_letter_parsing(text, n, expected):
    assert eval_science_qa.parse_letter(text, n) == expected


def test_science_qa_files(tmp_path):
    base = tmp_path / "sqa"
    base.mkdir()
    (base / "problems.json").write_text(json.dumps({
        "1": {"choices": ["x", "y"], "answer": 1}, "2": {"choices": ["x", "y", "z"], "answer": 0},
        "3": {"choices": ["x", "y", "z"], "answer": 2}, "4": {"choices": ["x", "y"], "answer": 0},
        "5": {"choices": ["x", "y"], "answer": 0}}))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4"], "val": ["5"]}))
    res = _results(tmp_path / "r.jsonl", {"1": "B", "2": "A. x", "3": "D", "4": "", "5": "A"})
    m = eval_science_qa.main(["--base-dir", str(base), "--result-file", res, "--output-file",
                              str(tmp_path / "out.json")])
    assert (m["correct"], m["total"], m["unparsable"]) == (2, 4, 2)  # "D" with 3 choices and "" are unparsable
    assert m["accuracy"] == pytest.approx(50.0)
    assert json.loads((tmp_path / "out.json").read_text())["correct"] == 2


def test_spatial_per_category_and_majority(tmp_path):
    ann = [{"question_id": "q0", "answer": "red", "category": "colour"},
           {"question_id": "q1", "answer": "red", "category": "colour"},
           {"question_id": "q2", "answer": "blue", "category": "colour"},
           {"question_id": "q3", "answer": "top left", "category": "absolute_position"},
           {"question_id": "q4", "answer": "center", "category": "absolute_position"},
           {"question_id": "q5", "answer": "two", "category": "counting"},
           {"question_id": "q6", "answer": "yes", "category": "relative_position"}]
    preds = {"q0": "Red.", "q1": "blue", "q2": "BLUE", "q3": "top left", "q5": "2", "q6": "Yes"}  # q4 missing
    m = eval_spatial.main(["--annotation-file", _jsonl(tmp_path / "a.jsonl", ann),
                           "--result-file", _results(tmp_path / "r.jsonl", preds),
                           "--output-file", str(tmp_path / "m.json")])
    assert m["accuracy"]["colour"] == pytest.approx(200 / 3)
    assert m["accuracy"]["absolute_position"] == pytest.approx(50.0)
    assert m["accuracy"]["counting"] == 100.0 and m["accuracy"]["relative_position"] == 100.0
    assert m["accuracy"]["overall"] == pytest.approx(500 / 7)
    assert m["missing"] == 1
    # majority: colour "red" (2/3); position tie -> alphabetical "center" (1/2); counting/relative 1/1
    assert m["majority_answer"]["colour"] == "red" and m["majority_answer"]["absolute_position"] == "center"
    assert m["majority"]["colour"] == pytest.approx(200 / 3) and m["majority"]["absolute_position"] == 50.0
    assert m["majority"]["overall"] == pytest.approx(100 * 5 / 7)
    assert json.loads((tmp_path / "m.json").read_text())["count"]["colour"] == 3
    assert "| colour | 3 | 66.7 | 66.7 | red |" in eval_spatial.format_table(m)


def test_missing_files_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--annotation-file"):
        eval_spatial.evaluate(tmp_path / "nope.jsonl", tmp_path / "r.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        eval_textvqa.predictions_by_id(bad)


def test_single_line_jsonl_is_a_list(tmp_path):
    from llava.eval.eval_textvqa import read_jsonl_or_json

    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "text": "red"}\n')
    assert read_jsonl_or_json(path, "--result-file") == [{"question_id": 1, "text": "red"}]
