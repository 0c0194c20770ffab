"""K-fold runs of the three-stage workflow, folds split by image, mean ± std per metric.

    python -m llava.workflows.kfold --data slake_train.json --image-folder Slake1.0/imgs --k 5 \\
        --output-dir runs/kfold --stages 1,2,3 --stages 2,3 [--seed 0] [--dry-run] [-- ADDON FLAGS]

The domain dataset (LLaVA JSON, e.g. from :mod:`llava.data.convert_slake`) is split into ``k`` folds by
image: every record of one image lands in the same fold, so no held-out image is seen in training.
Text-only records stay in every training split. For each fold and each ``--stages`` configuration the
three-stage workflow (:mod:`llava.workflows.three_stage`, settings from the environment as there) trains
the domain stages (``--domain-stages``, default 2,3) on the other folds, validates them during training on
the held-out fold (``EVAL_DATA_PATH`` = the fold's ``test.json``) and evaluates the last stage on the
held-out fold (one question per turn, exact match per ``category``). Stage 1 does not depend on the fold,
so it runs once (``shared_stage1/``) and every fold of a configuration that includes it starts from its
projector. All configurations use the same folds, so their differences are paired.

Written under ``--output-dir``: ``folds.json`` (image -> fold), ``fold{i}/{train.json,test.json,
test_questions.jsonl,test_answers.jsonl}``, the workflow's folders of every configuration in
``fold{i}/`` (``stage1-2``, ``stage1-2-3`` for 1-2-3 on the shared stage 1, ``stage2``, ``stage2-3`` for
2-3; with ``plan.json`` and a ``summary.md`` comparing them), and the report ``kfold.md`` / ``kfold.json``
/ ``kfold.png`` / ``kfold_stages.png``: per metric, each fold's value and mean ± std (sample std, ddof=1,
over the n folds) per configuration: the held-out exact match of the last stage, and per stage the final
validation ``eval_loss`` / ``eval_accuracy`` (the last evaluation entry of the stage's training run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llava.data.convert_table import eval_rows, write_json, write_jsonl
from llava.workflows.curves import final_eval
from llava.workflows.plan import EvalConfig, Runner, StageConfig, WorkflowConfig
from llava.workflows.three_stage import (
    build_plan,
    config_from_env,
    parse_stages,
    run_plan,
    step_record,
    subprocess_runner,
)


def split_by_image(records: Sequence[Mapping[str, Any]], k: int, seed: int = 0) -> list[list[int]]:
    """Indices of the records in each of ``k`` folds; all records of an image share a fold, text-only records
    are in none. Images are shuffled with ``seed``, then placed largest group first on the fold with the fewest
    records, so folds are balanced by record count."""
    if k < 2:
        raise ValueError(f"--k must be >= 2, got {k}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        if rec.get("image"):
            groups[str(rec["image"])].append(i)
    if len(groups) < k:
        raise ValueError(f"--k {k} folds need at least {k} distinct images; the data has {len(groups)}")
    images = sorted(groups)
    random.Random(seed).shuffle(images)
    images.sort(key=lambda im: -len(groups[im]))  # stable: ties keep the shuffled order
    folds: list[list[int]] = [[] for _ in range(k)]
    for im in images:
        target = min(range(k), key=lambda f: (len(folds[f]), f))
        folds[target].extend(groups[im])
    return [sorted(f) for f in folds]


def write_fold(records: Sequence[Mapping[str, Any]], folds: Sequence[Sequence[int]], i: int,
               fold_dir: Path) -> dict[str, str]:
    """Write fold ``i``'s train/test JSON and eval files; returns their paths."""
    held = set(folds[i])
    train = [r for j, r in enumerate(records) if j not in held]
    test = [records[j] for j in sorted(held)]
    questions, answers = eval_rows(test)
    paths = {"train": str(fold_dir / "train.json"), "test": str(fold_dir / "test.json"),
             "questions": str(fold_dir / "test_questions.jsonl"), "answers": str(fold_dir / "test_answers.jsonl")}
    write_json(paths["train"], train)
    write_json(paths["test"], test)
    write_jsonl(paths["questions"], questions)
    write_jsonl(paths["answers"], answers)
    return paths


def config_label(stages: Sequence[int]) -> str:
    """``(1, 2, 3)`` -> ``"1-2-3"``."""
    return "-".join(map(str, stages))


def fold_config(base: WorkflowConfig, stages: Sequence[int], domain_stages: Sequence[int], paths: Mapping[str, str],
                image_folder: str, out: Path, init_projector: str | None,
                after: Sequence[int] = ()) -> WorkflowConfig:
    """The workflow config of one (fold, configuration): domain stages train on the fold's training split and
    validate on its held-out split, the last stage is evaluated on the held-out split; ``after`` names the
    stages the ``init_projector`` comes from (folder names)."""
    configs: list[StageConfig] = []
    for sc in base.stage_configs:
        if sc.number in domain_stages:
            sc = replace(sc, data_path=paths["train"], image_folder=image_folder, eval_data=paths["test"],
                         eval_images=image_folder)
        configs.append(sc)
    ev = base.eval or EvalConfig(paths["questions"], paths["answers"], image_folder)
    ev = replace(ev, questions=paths["questions"], answers=paths["answers"], image_folder=image_folder)
    return replace(base, stages=tuple(stages), output_root=str(out), stage_configs=tuple(configs), eval=ev,
                   eval_stages=(stages[-1],), init_projector=init_projector or base.init_projector,
                   after=tuple(after))


def stage_metrics(cfg: WorkflowConfig) -> dict[str, float]:
    """``{"stage<N>/eval_loss": ..., "stage<N>/eval_accuracy": ...}``: each stage's final validation entry."""
    out: dict[str, float] = {}
    for step in build_plan(cfg):
        last = final_eval(step.output_dir) or {}
        for key in ("eval_loss", "eval_accuracy"):
            if isinstance(last.get(key), (int, float)):
                out[f"stage{step.stage}/{key}"] = float(last[key])
    return out


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """eval_spatial metrics -> ``{"accuracy/<category>": %, "majority/overall": %}``."""
    flat = {f"accuracy/{c}": float(v) for c, v in metrics["accuracy"].items()}
    flat["majority/overall"] = float(metrics["majority"]["overall"])
    return flat


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    if not values:
        raise ValueError("no values to aggregate")
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def aggregate(per_fold: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """``{metric: {"values": [...], "n", "mean", "std"}}`` over folds (a metric missing in a fold is left out
    there; ``n`` counts the folds that have it)."""
    names = sorted({m for fold in per_fold for m in fold})
    out = {}
    for name in names:
        values = [fold[name] for fold in per_fold if name in fold]
        m, s = mean_std(values)
        out[name] = {"values": values, "n": len(values), "mean": m, "std": s}
    return out


def is_stage_metric(name: str) -> bool:
    """``stage2/eval_loss`` and the like (validation per stage), not held-out exact match."""
    return name.startswith("stage")


def _table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], metrics: Sequence[str], fmt: str) -> list[str]:
    labels = list(results)
    lines = ["| metric | " + " | ".join(f"{lab} (mean ± std)" for lab in labels) + " | n | per fold |",
             "|---" * (len(labels) + 3) + "|"]
    for m in metrics:
        cells, folds, ns = [], [], set()
        for lab in labels:
            agg = results[lab].get(m)
            cells.append(f"{agg['mean']:{fmt}} ± {agg['std']:{fmt}}" if agg else "-")
            if agg:
                ns.add(str(agg.get("n", len(agg["values"]))))
                folds.append(f"{lab}: " + ", ".join(f"{v:{fmt}}" for v in agg["values"]))
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'/'.join(sorted(ns))} | " + "; ".join(folds) + " |")
    return lines


def report_markdown(results: Mapping[str, Mapping[str, Mapping[str, Any]]], k: int) -> str:
    """Markdown: held-out exact match (one row per metric, one ``mean ± std`` column per configuration, then
    the fold values), then the final validation loss/accuracy per stage in the same form."""
    names = {m for r in results.values() for m in r}
    exact = sorted((m for m in names if not is_stage_metric(m)), key=lambda m: (m.startswith("majority"), m))
    stages = sorted(m for m in names if is_stage_metric(m))
    lines = [f"K-fold results ({k} folds, split by image; mean ± sample std (ddof=1) over the n folds).", ""]
    if exact:
        lines += ["Held-out exact match of the last stage (accuracy in %):", "", *_table(results, exact, ".2f"), ""]
    if stages:
        lines += ["Validation per stage: the final `eval_loss` / `eval_accuracy` (answer-token accuracy, 0..1) of "
                  "each stage's training run, on the held-out fold:", "", *_table(results, stages, ".4f"), ""]
    return "\n".join(lines)


def _bars(ax: Any, results: Mapping[str, Mapping[str, Mapping[str, Any]]], metrics: Sequence[str],
          ticks: Sequence[str]) -> None:
    labels = list(results)
    width = 0.8 / max(1, len(labels))
    for j, lab in enumerate(labels):
        xs = [i + j * width for i in range(len(metrics))]
        means = [results[lab].get(m, {}).get("mean", float("nan")) for m in metrics]
        stds = [results[lab].get(m, {}).get("std", 0.0) for m in metrics]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=lab)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(metrics))], ticks, rotation=20,
                  ha="right", fontsize=8)
    ax.legend(fontsize=8)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, k: int | None = None) -> None:
    """Grouped bar chart of the held-out exact-match metrics: one bar per configuration, fold std as error
    bars."""
    plt = _pyplot()
    metrics = sorted({m for r in results.values() for m in r if not is_stage_metric(m)})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * max(1, len(results))), 3.5))
    _bars(ax, results, metrics, metrics)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("k-fold mean ± std" + (f" over {k} folds" if k else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_stages(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, k: int) -> bool:
    """Final validation loss and accuracy per stage: bars per configuration, fold std as error bars; ``False``
    (nothing drawn) when no stage was validated."""
    names = sorted({m for r in results.values() for m in r if is_stage_metric(m)})
    if not names:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key in zip(axes, ("eval_loss", "eval_accuracy")):
        metrics = [m for m in names if m.endswith("/" + key)]
        _bars(ax, results, metrics, [m.split("/")[0] for m in metrics])
        ax.set_title(f"final {key} per stage, mean ± std over {k} folds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_kfold(data: str, image_folder: str, k: int, output_dir: str, configs: Sequence[Sequence[int]],
              base: WorkflowConfig, domain_stages: Sequence[int] = (2, 3), seed: int = 0,
              runner: Runner = subprocess_runner, dry_run: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, train and evaluate every (configuration, fold); write the report. Returns the report dict
    (with ``dry_run`` the plans only, nothing is run)."""
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"--data {data!r} does not exist (a LLaVA-format JSON list)")
    records = json.loads(path.read_text())
    folds = split_by_image(records, k, seed)
    out = Path(output_dir).resolve()  # the stages run from the repo root: absolute fold paths
    write_json(out / "folds.json", {str(records[j]["image"]): i for i, f in enumerate(folds) for j in f})
    shared: dict[str, str | None] = {"projector": None}
    if any(1 in c for c in configs) and 1 not in domain_stages:
        cfg1 = replace(base, stages=(1,), output_root=str(out / "shared_stage1"), eval=None, eval_stages=())
        shared["projector"] = build_plan(cfg1)[0].projector
        if not dry_run:
            run_plan(cfg1, runner, log)
    plans: dict[str, Any] = {}
    per_config: dict[str, list[dict[str, float]]] = {config_label(c): [] for c in configs}
    for i in range(k):
        fold_dir = out / f"fold{i}"
        paths = write_fold(records, folds, i, fold_dir)
        for stages in configs:
            label = config_label(stages)
            shared_used = 1 in stages and bool(shared["projector"])
            run_stages = tuple(s for s in stages if not (s == 1 and shared_used))
            cfg = fold_config(base, run_stages, domain_stages, paths, image_folder, fold_dir,
                              shared["projector"] if shared_used else None, (1,) if shared_used else ())
            if dry_run:
                plans[f"fold{i}/{label}"] = [step_record(s) for s in build_plan(cfg)]
                continue
            log(f"[kfold] fold {i + 1}/{k}, stages {label}")
            metrics = run_plan(cfg, runner, log)[run_stages[-1]]
            per_config[label].append({**flatten_metrics(metrics), **stage_metrics(cfg)})
    if dry_run:
        return {"folds": [len(f) for f in folds], "plans": plans}
    results = {label: aggregate(v) for label, v in per_config.items()}
    report = {"k": k, "n_folds": k, "seed": seed, "fold_sizes": [len(f) for f in folds], "results": results}
    write_json(out / "kfold.json", report)
    (out / "kfold.md").write_text(report_markdown(results, k))
    plot(results, out / "kfold.png", k)
    if not plot_stages(results, out / "kfold_stages.png", k):
        (out / "kfold_stages.png").unlink(missing_ok=True)
    log(report_markdown(results, k))
    return report


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="domain data, LLaVA-format JSON")
    p.add_argument("--image-folder", required=True, help="images of --data")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--stages", action="append", default=None,
                   help="stages of one configuration, e.g. 1,2,3; repeat to compare (default 1,2,3)")
    p.add_argument("--domain-stages", default="2,3", help="stages trained on the fold's training split")
    p.add_argument("--dry-run", action="store_true", help="write the folds and print the plans; train nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: arguments after ``--`` are add-on flags forwarded to every stage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    addon: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, addon = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    try:
        configs = [parse_stages(s, "--stages") for s in (args.stages or ["1,2,3"])]
        base = config_from_env(os.environ, addon)
        report = run_kfold(args.data, args.image_folder, args.k, args.output_dir, configs, base,
                           parse_stages(args.domain_stages, "--domain-stages"), args.seed, dry_run=args.dry_run)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"kfold: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(report, indent=1))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
