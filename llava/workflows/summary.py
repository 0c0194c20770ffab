"""``summary.md`` of a three-stage output root, with the pictures of :mod:`llava.workflows.curves`.

Only chains of ``plan.json`` whose every folder is finished and whose ``stage.json`` equals the plan's
entry are shown, so the summary never shows a stage that does not match the plan. Per stage: the final
training loss/accuracy and the final validation ``eval_loss`` / ``eval_accuracy`` (the last entries of
``model/trainer_state.json``), and the held-out exact match (``eval/metrics.json``) when it was run; then
exact match per category, then the pictures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.utils.atomic import atomic_write_text
from llava.workflows.curves import StageLog, draw_pictures, load_stage_log
from llava.workflows.stage_records import RECORD, load_json

CAPTIONS = {"validation_loss.png": "validation loss across the stages (one time axis per chain)",
            "accuracy.png": "training and validation accuracy per stage",
            "chains.png": "the domain stages of every chain compared"}


def verified_chains(root: Path, state: Mapping[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """(chain -> its stage records, notes on the chains left out)."""
    chains: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for label, folders in state.get("chains", {}).items():
        records = []
        for folder in folders:
            entry = state.get("stages", {}).get(folder)
            if not entry or not entry.get("finished") or load_json(root / folder / RECORD) != entry:
                notes.append(f"chain {label}: {folder} is not finished (or does not match plan.json)")
                break
            records.append(entry)
        else:
            chains[label] = records
    return chains, notes


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _stage_rows(chains: Mapping[str, Sequence[StageLog]],
                held: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    lines = ["| chain | stage | folder | steps | train loss | train accuracy | eval_loss | eval_accuracy | "
             "held-out exact match (%) |", "|---" * 9 + "|"]
    for label, logs in chains.items():
        for log in logs:
            tr, ev = log.final_train or {}, log.final_eval or {}
            metrics = held.get(log.folder) or {}
            exact = (metrics.get("accuracy") or {}).get("overall")
            lines.append(f"| {label} | {log.stage} {log.name} | {log.folder} | {log.total_steps} | "
                         f"{_num(tr.get('loss'))} | {_num(tr.get('accuracy'))} | {_num(ev.get('eval_loss'))} | "
                         f"{_num(ev.get('eval_accuracy'))} | {_num(exact, '.1f')} |")
    return lines


def _category_rows(chains: Mapping[str, Sequence[StageLog]], held: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    evaluated = [(label, log, held[log.folder]) for label, logs in chains.items() for log in logs
                 if held.get(log.folder)]
    if not evaluated:
        return []
    cats = sorted({c for _, _, m in evaluated for c in m["accuracy"]}, key=lambda c: (c == "overall", c))
    lines = ["## Held-out exact match per category (%)", "",
             "| chain | stage | " + " | ".join(cats) + " | majority (overall) |", "|---" * (len(cats) + 3) + "|"]
    for label, log, m in evaluated:
        cells = [_num(m["accuracy"].get(c), ".1f") for c in cats]
        lines.append(f"| {label} | {log.stage} {log.name} | " + " | ".join(cells)
                     + f" | {_num(m.get('majority', {}).get('overall'), '.1f')} |")
    return [*lines, ""]


def render_summary(root: Path, chains: Mapping[str, Sequence[StageLog]], held: Mapping[str, Mapping[str, Any] | None],
                   pictures: Sequence[str], notes: Sequence[str]) -> str:
    """The Markdown text of ``summary.md``."""
    lines = [f"# Three-stage summary: {root}", "",
             "Each folder holds the model after the stages in its name (`stage1-2`: stage 2 trained on from "
             "stage 1; `stage2`: stage 2 from a fresh projector). Chains:", ""]
    lines += [f"- `{label}`: " + " -> ".join(log.folder for log in logs) for label, logs in chains.items()]
    lines += ["", "## Final values per stage", "",
              "Training and validation columns: the last entries of the stage's `model/trainer_state.json` "
              "(validation data: the stage's `EVAL_DATA_PATH`; accuracy: answer-token accuracy, 0..1). "
              "Held-out: exact match (`eval/metrics.json`, overall).", "", *_stage_rows(chains, held), ""]
    lines += _category_rows(chains, held)
    lines += ["## Curves", ""]
    lines += [f"![{CAPTIONS[p]}]({p})" + "\n" for p in pictures] or ["(no training logs to draw)", ""]
    if "chains.png" not in pictures:
        lines += ["To compare chains, run another one into the same OUTPUT_ROOT (e.g. `STAGES=2,3` after "
                  "`STAGES=1,2,3`).", ""]
    if notes:
        lines += ["## Not shown", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def write_summary(root: Path, state: Mapping[str, Any]) -> Path:
    """Write ``summary.md`` and its pictures under ``root`` from ``plan.json``'s ``state``; returns the path."""
    records, notes = verified_chains(root, state)
    chains: dict[str, list[StageLog]] = {}
    held: dict[str, Mapping[str, Any] | None] = {}
    for label, recs in records.items():
        for rec in recs:
            folder = Path(rec["stage_dir"]).name
            held[folder] = load_json(root / folder / "eval" / "metrics.json")
            chains.setdefault(label, []).append(load_stage_log(root / folder / "model", int(rec["stage"]),
                                                               str(rec.get("name", "")), folder))
    pictures = draw_pictures(chains, root)
    path = root / "summary.md"
    atomic_write_text(path, render_summary(root, chains, held, pictures, notes))
    return path
