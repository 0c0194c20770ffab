"""TextVQA / VQAv2-style soft accuracy with the VQA answer normalization.

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl

Annotations: TextVQA's JSON (``{"data": [{"question_id", "answers": [10 strings]}, ...]}``), a JSON
list, or JSONL with ``question_id`` and ``answers``. Results: the generators' JSONL (``question_id``,
``text``). A prediction's score against the human answers is the VQA soft accuracy: for each
human answer left out in turn, ``min(1, #matches among the others / 3)``, averaged (with 10 answers
this is the official metric; a match by 3+ annotators scores ~1). With a single reference answer
the score is exact match. Both sides are normalized by :func:`normalize_answer` first.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llava.utils.jsonl import parse_jsonl

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!", ":", "*", "#", "%", "&", "$", "^", "~", "|")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "hows": "how's", "id": "i'd",
    "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've", "lets": "let's",
    "mightnt": "mightn't", "mustnt": "mustn't", "shes": "she's", "shouldnt": "shouldn't",
    "shouldve": "should've", "thats": "that's", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't",
    "weve": "we've", "whats": "what's", "wheres": "where's", "whos": "who's", "wont": "won't",
    "wouldnt": "wouldn't", "wouldve": "would've", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_COMMA_IN_NUMBER = re.compile(r"(?<=\d),(?=\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"(?<!\d)\.|\.(?!\d)")


def normalize_answer(text: str) -> str:
    """VQA normalization: lowercase, whitespace, punctuation, number words -> digits, articles, contractions.

    "The Two Dogs." -> "2 dogs"; "1,000" -> "1000"; "3.5" stays; "dont" -> "don't"; "t-shirt" -> "t shirt".
    """
    text = " ".join(str(text).replace("\n", " ").replace("\t", " ").lower().split())
    text = _COMMA_IN_NUMBER.sub("", text)
    for p in PUNCTUATION:
        text = text.replace(p, " ")
    text = _PERIOD_NOT_DECIMAL.sub(" ", text)
    words = []
    for word in text.split():
        word = word.strip("'")
        word = NUMBER_WORDS.get(word, word)
        if not word or word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def soft_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA soft accuracy of ``prediction`` against the reference ``answers`` (normalized inside)."""
    if not answers:
        raise ValueError("soft_score needs at least one reference answer")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    accs = []
    for i in range(len(refs)):
        matches = sum(1 for j, r in enumerate(refs) if j != i and r == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def read_jsonl_or_json(path: str | Path, flag: str) -> Any:
    """Load a JSON document or a JSONL file (returned as a list); errors name the flag and path."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {str(p)!r} does not exist")
    text = p.read_text()
    if p.suffix != ".jsonl":  # a .jsonl file is always read line by line, even with a single line
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return parse_jsonl(text, f"{flag} {str(p)!r}")


def predictions_by_id(path: str | Path, flag: str = "--result-file") -> dict[str, str]:
    """``{str(question_id): text}`` from a generator's answers file."""
    rows = read_jsonl_or_json(path, flag)
    if isinstance(rows, dict):
        rows = [rows]
    return {str(r["question_id"]): str(r.get("text", "")) for r in rows}


def _annotation_rows(obj: Any) -> Iterable[dict[str, Any]]:
    if isinstance(obj, dict):
        return obj.get("data") or obj.get("annotations") or []
    return obj


def score(annotations: Any, predictions: dict[str, str]) -> dict[str, float]:
    """Mean soft accuracy over annotated questions (a missing prediction scores 0)."""
    total, n, missing = 0.0, 0, 0
    for row in _annotation_rows(annotations):
        answers = row.get("answers")
        if answers and isinstance(answers[0], dict):  # VQAv2 annotation objects
            answers = [a["answer"] for a in answers]
        qid = str(row["question_id"])
        if qid not in predictions:
            missing += 1
        total += soft_score(predictions.get(qid, ""), answers)
        n += 1
    if n == 0:
        raise ValueError("the annotation file has no questions")
    return {"accuracy": 100.0 * total / n, "total": n, "missing": missing}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """CLI entry point; prints and returns the metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", required=True)
    a = p.parse_args(argv)
    metrics = score(read_jsonl_or_json(a.annotation_file, "--annotation-file"), predictions_by_id(a.result_file))
    print(f"Samples: {metrics['total']} (missing predictions: {metrics['missing']})")
    print(f"Accuracy: {metrics['accuracy']:.2f}%")
    return metrics


if __name__ == "__main__":
    main()
