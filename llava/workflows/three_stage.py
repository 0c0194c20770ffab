"""Three-stage training: (1) general alignment, (2) domain alignment, (3) domain instruction tuning.

    STAGES=1,2,3 DOMAIN_DATA=slake_train.json DOMAIN_IMAGES=Slake1.0/imgs bash scripts/three_stage.sh [FLAGS]
    python -m llava.workflows.three_stage [--dry-run] [FLAGS]      # same thing, settings from the environment

Every stage runs one of the v1.5 stage scripts (defaults: 1 ``pretrain.sh`` on ``STAGE1_DATA``, 2
``pretrain.sh`` on the domain data, 3 ``finetune.sh`` on the domain data) and starts from the previous
stage's output: a projector stage hands its ``mm_projector.bin`` on (``--pretrain_mm_mlp_adapter`` for a
projector stage, ``PRETRAIN_MM_MLP_ADAPTER`` for a fine-tune stage), a full-model stage hands its folder on
as ``MODEL_NAME`` (``finetune_task*.sh``). The first stage run starts from ``INIT_PROJECTOR`` /
``INIT_MODEL`` when set (``STAGES=2,3`` starts stage 2 from a fresh projector otherwise). FLAGS (add-on
flags such as ``--normalize_projector True``) go to every stage.

Layout under ``OUTPUT_ROOT``: ``plan.json`` (the resolved plan), and per stage ``stageN/model/`` (the
stage's ``OUTPUT_DIR``), ``stageN/train.log``, ``stageN/stage.json`` (written when the stage finished;
a finished stage is skipped on rerun unless ``FORCE=1``) and, with ``EVAL_QUESTIONS``/``EVAL_ANSWERS``,
``stageN/eval/{answers.jsonl,metrics.json,eval.log}`` (:mod:`llava.eval.model_vqa_loader` answers,
:mod:`llava.eval.eval_spatial` exact-match accuracy per category). ``summary.md`` lists the metrics.

Settings (environment): ``STAGES``, ``OUTPUT_ROOT``, ``MODEL_NAME``, ``DOMAIN_DATA``, ``DOMAIN_IMAGES``,
``STAGE{N}_SCRIPT|DATA|IMAGES|ARGS`` and ``STAGE{N}_<VAR>`` for VAR in :data:`STAGE_VARS` (e.g.
``STAGE1_MAX_STEPS``); ``INIT_PROJECTOR``, ``INIT_MODEL``; ``EVAL_QUESTIONS``, ``EVAL_ANSWERS``,
``EVAL_IMAGES``, ``EVAL_STAGES``, ``EVAL_BATCH_SIZE``, ``EVAL_MAX_NEW_TOKENS``, ``EVAL_CONV_MODE``;
``DEVICE`` and everything else the stage scripts read (``scripts/v1_5/_common.sh``) pass through.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = MappingProxyType({1: "general_alignment", 2: "domain_alignment", 3: "instruction_tuning"})
STAGE_VARS = ("MAX_STEPS", "EPOCHS", "LR", "BATCH_SIZE", "GRAD_ACCUM", "SAVE_STEPS", "MODEL_MAX_LENGTH",
              "DS_CONFIG", "MM_PROJECTOR_LR", "LORA_R", "LORA_ALPHA", "NUM_GPUS", "WARMUP_RATIO")


@dataclass(frozen=True)
class ScriptKind:
    """How a stage script starts and what it leaves: ``start`` is ``flag`` (optional projector via
    ``--pretrain_mm_mlp_adapter``), ``env`` (projector via ``PRETRAIN_MM_MLP_ADAPTER``, required) or
    ``model`` (a finished LLaVA model as ``MODEL_NAME``); ``makes`` is ``projector``, ``model`` or ``lora``."""

    start: str
    makes: str


SCRIPT_KINDS = MappingProxyType({
    "pretrain.sh": ScriptKind("flag", "projector"),
    "multiNormpretrain.sh": ScriptKind("flag", "projector"),
    "finetune.sh": ScriptKind("env", "model"),
    "multiNormfinetune.sh": ScriptKind("env", "model"),
    "finetune_lora.sh": ScriptKind("env", "lora"),
    "finetune_task.sh": ScriptKind("model", "model"),
    "finetune_task_lora.sh": ScriptKind("model", "lora"),
})
DEFAULT_SCRIPTS = MappingProxyType({1: "pretrain.sh", 2: "pretrain.sh", 3: "finetune.sh"})
OUTPUT_MARKERS = MappingProxyType({"projector": "mm_projector.bin", "model": "config.json",
                                   "lora": "adapter_config.json"})

Runner = Callable[[list[str], Mapping[str, str], Path], int]


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation after a stage: questions/annotations in upstream's eval format."""

    questions: str
    answers: str
    image_folder: str
    batch_size: int = 8
    max_new_tokens: int = 16
    conv_mode: str | None = None


@dataclass(frozen=True)
class StageConfig:
    """One stage's script, data and stage-only settings."""

    number: int
    script: str
    data_path: str
    image_folder: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkflowConfig:
    """Everything the plan depends on."""

    stages: tuple[int, ...]
    output_root: str
    stage_configs: tuple[StageConfig, ...]
    base_model: str
    addon_args: tuple[str, ...] = ()
    init_projector: str | None = None
    init_model: str | None = None
    eval: EvalConfig | None = None
    eval_stages: tuple[int, ...] = ()
    device: str = "gpu"
    force: bool = False

    def stage(self, number: int) -> StageConfig:
        """The config of stage ``number``."""
        for s in self.stage_configs:
            if s.number == number:
                return s
        raise KeyError(f"no configuration for stage {number}")


@dataclass(frozen=True)
class StageStep:
    """One planned stage run: the command, the environment it adds, its folders and what it starts from."""

    stage: int
    name: str
    script: str
    kind: ScriptKind
    env: dict[str, str]
    args: list[str]
    stage_dir: str
    output_dir: str
    init_from: str | None
    eval_base: str | None
    evaluate: bool

    @property
    def command(self) -> list[str]:
        """argv of the stage run."""
        return ["bash", self.script, *self.args]

    @property
    def projector(self) -> str:
        """Where the projector this stage writes will be (projector stages)."""
        return str(Path(self.output_dir) / "mm_projector.bin")


def parse_stages(text: str, flag: str = "STAGES") -> tuple[int, ...]:
    """``"1,2,3"`` -> ``(1, 2, 3)``; stages must be distinct, increasing and within 1..3."""
    try:
        stages = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected a comma-separated list such as 1,2,3 or 2,3") from None
    if not stages or any(s not in STAGE_NAMES for s in stages) or list(stages) != sorted(set(stages)):
        raise ValueError(f"{flag}={text!r}: expected increasing distinct stages from 1,2,3 (e.g. 1,2,3 or 2,3)")
    return stages


def resolve_script(name: str) -> tuple[str, ScriptKind]:
    """(absolute path, kind) of a stage script named by file name (under scripts/v1_5/ or the repo root) or path."""
    base = Path(name).name
    if base not in SCRIPT_KINDS:
        raise ValueError(f"stage script {name!r} is not one the workflow knows how to chain; use one of "
                         f"{', '.join(SCRIPT_KINDS)}")
    for cand in (Path(name), REPO / name, REPO / "scripts" / "v1_5" / base, REPO / base):
        if cand.is_file():
            return str(cand.resolve()), SCRIPT_KINDS[base]
    raise FileNotFoundError(f"stage script {name!r} not found (looked in scripts/v1_5/ and the repo root)")


def config_from_env(env: Mapping[str, str], addon_args: Sequence[str] = ()) -> WorkflowConfig:
    """Build the workflow config from environment variables (see the module docstring)."""
    stages = parse_stages(env.get("STAGES", "1,2,3"))
    pre_root = env.get("PRETRAIN_DATA_ROOT", "./playground/data/LLaVA-Pretrain")
    domain_data = env.get("DOMAIN_DATA", "./playground/data/slake/slake_train.json")
    domain_images = env.get("DOMAIN_IMAGES", "./playground/data/slake/imgs")
    defaults = {1: (f"{pre_root}/blip_laion_cc_sbu_558k.json", f"{pre_root}/images"),
                2: (domain_data, domain_images), 3: (domain_data, domain_images)}
    configs = []
    for n in STAGE_NAMES:
        data, images = defaults[n]
        configs.append(StageConfig(
            number=n, script=env.get(f"STAGE{n}_SCRIPT", DEFAULT_SCRIPTS[n]),
            data_path=env.get(f"STAGE{n}_DATA", data), image_folder=env.get(f"STAGE{n}_IMAGES", images),
            env={v: env[f"STAGE{n}_{v}"] for v in STAGE_VARS if env.get(f"STAGE{n}_{v}")},
            args=tuple(shlex.split(env.get(f"STAGE{n}_ARGS", "")))))
    eval_cfg = None
    if env.get("EVAL_QUESTIONS") or env.get("EVAL_ANSWERS"):
        if not (env.get("EVAL_QUESTIONS") and env.get("EVAL_ANSWERS")):
            raise ValueError("set both EVAL_QUESTIONS (questions JSONL) and EVAL_ANSWERS (reference answers JSONL), "
                             "e.g. from llava.data.convert_slake --questions-out/--answers-out")
        eval_cfg = EvalConfig(env["EVAL_QUESTIONS"], env["EVAL_ANSWERS"], env.get("EVAL_IMAGES", domain_images),
                              int(env.get("EVAL_BATCH_SIZE", "8")), int(env.get("EVAL_MAX_NEW_TOKENS", "16")),
                              env.get("EVAL_CONV_MODE") or None)
    eval_stages = parse_stages(env["EVAL_STAGES"], "EVAL_STAGES") if env.get("EVAL_STAGES") else stages
    return WorkflowConfig(
        stages=stages, output_root=env.get("OUTPUT_ROOT", "./checkpoints/three_stage"),
        stage_configs=tuple(configs), base_model=env.get("MODEL_NAME", env.get("LLM_NAME", "lmsys/vicuna-13b-v1.5")),
        addon_args=tuple(addon_args), init_projector=env.get("INIT_PROJECTOR") or None,
        init_model=env.get("INIT_MODEL") or None, eval=eval_cfg, eval_stages=eval_stages,
        device=env.get("DEVICE", "gpu"), force=env.get("FORCE", "0") not in ("", "0", "false", "False"))


def _start_error(n: int, script: str, what: str, fix: str) -> ValueError:
    return ValueError(f"stage {n} ({Path(script).name}) {what}; {fix}")


def build_plan(cfg: WorkflowConfig) -> list[StageStep]:
    """The stage runs in order, each wired to the previous one's output (pure: runs nothing)."""
    root = Path(cfg.output_root).resolve()
    plan: list[StageStep] = []
    prev: StageStep | None = None
    for n in cfg.stages:
        sc = cfg.stage(n)
        script, kind = resolve_script(sc.script)
        stage_dir = root / f"stage{n}"
        out = stage_dir / "model"
        env = {"DATA_PATH": sc.data_path, "IMAGE_FOLDER": sc.image_folder, "OUTPUT_DIR": str(out),
               "MODEL_NAME": cfg.base_model, **sc.env}
        args: list[str] = []
        if prev is None:
            projector, model = cfg.init_projector, cfg.init_model
            source = "INIT_PROJECTOR" if kind.start != "model" else "INIT_MODEL"
        else:
            projector = prev.projector if prev.kind.makes == "projector" else None
            model = prev.output_dir if prev.kind.makes == "model" else None
            source = f"stage {prev.stage}"
        if kind.start in ("flag", "env") and projector is None and (prev is not None or kind.start == "env"):
            made = "nothing" if prev is None else f"a {prev.kind.makes}"
            raise _start_error(n, script, f"starts from a projector but {source} gives {made}",
                               "set INIT_PROJECTOR to an mm_projector.bin, or choose a stage script that continues "
                               f"a full model (STAGE{n}_SCRIPT=finetune_task.sh)")
        if kind.start == "model" and model is None:
            raise _start_error(n, script, f"continues a full LLaVA model but {source} gives none",
                               "set INIT_MODEL, or run a full fine-tune stage before it (a LoRA stage must be "
                               "merged first with scripts/merge_lora_weights.py)")
        init_from: str | None = None
        if kind.start == "flag" and projector:
            args += ["--pretrain_mm_mlp_adapter", projector]
            init_from = projector
        elif kind.start == "env":
            env["PRETRAIN_MM_MLP_ADAPTER"] = init_from = str(projector)
        elif kind.start == "model":
            env["MODEL_NAME"] = init_from = str(model)
        eval_base = env["MODEL_NAME"] if kind.makes in ("projector", "lora") else None
        args += [*sc.args, *cfg.addon_args]
        step = StageStep(stage=n, name=STAGE_NAMES[n], script=script, kind=kind, env=env, args=args,
                         stage_dir=str(stage_dir), output_dir=str(out), init_from=init_from, eval_base=eval_base,
                         evaluate=cfg.eval is not None and n in cfg.eval_stages)
        plan.append(step)
        prev = step
    return plan


def subprocess_runner(cmd: list[str], env: Mapping[str, str], log: Path) -> int:
    """Run ``cmd`` from the repo root with the current environment plus ``env``; output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = str(REPO) + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
    with log.open("w") as f:
        return subprocess.run(cmd, cwd=REPO, env=full_env, stdout=f, stderr=subprocess.STDOUT).returncode


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def eval_command(step: StageStep, ev: EvalConfig, answers_file: Path, device: str) -> list[str]:
    """The model_vqa_loader command that answers the held-out questions with a stage's output."""
    cmd = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", step.output_dir,
           "--image-folder", ev.image_folder, "--question-file", ev.questions, "--answers-file", str(answers_file),
           "--batch-size", str(ev.batch_size), "--max_new_tokens", str(ev.max_new_tokens)]
    if step.eval_base:
        cmd += ["--model-base", step.eval_base]
    if ev.conv_mode:
        cmd += ["--conv-mode", ev.conv_mode]
    if device == "cpu":
        cmd += ["--device", "cpu"]
    return cmd


def evaluate_step(step: StageStep, cfg: WorkflowConfig, runner: Runner) -> dict[str, Any]:
    """Answer and score the held-out questions; writes ``stageN/eval/metrics.json`` and returns the metrics."""
    from llava.eval.eval_spatial import evaluate

    assert cfg.eval is not None
    eval_dir = Path(step.stage_dir) / "eval"
    answers = eval_dir / "answers.jsonl"
    log = eval_dir / "eval.log"
    rc = runner(eval_command(step, cfg.eval, answers, cfg.device), {}, log)
    if rc != 0:
        raise RuntimeError(f"evaluation of stage {step.stage} failed (rc={rc}); see {log}:\n{_tail(log)}")
    metrics = evaluate(cfg.eval.answers, answers)
    (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def step_record(step: StageStep) -> dict[str, Any]:
    """JSON-able description of a planned step."""
    rec = asdict(step)
    rec["command"] = step.command
    return rec


def run_plan(cfg: WorkflowConfig, runner: Runner = subprocess_runner,
             log: Callable[[str], None] = print) -> dict[int, dict[str, Any]]:
    """Run (or skip when finished) every stage in order, evaluate where asked; returns metrics per stage."""
    plan = build_plan(cfg)
    root = Path(cfg.output_root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(json.dumps([step_record(s) for s in plan], indent=1))
    results: dict[int, dict[str, Any]] = {}
    for step in plan:
        done = Path(step.stage_dir) / "stage.json"
        marker = Path(step.output_dir) / OUTPUT_MARKERS[step.kind.makes]
        if done.exists() and marker.exists() and not cfg.force:
            log(f"[three_stage] stage {step.stage} ({step.name}) already finished in {step.output_dir}; skipping")
        else:
            log(f"[three_stage] stage {step.stage} ({step.name}): {Path(step.script).name} -> {step.output_dir}"
                + (f" (starts from {step.init_from})" if step.init_from else ""))
            train_log = Path(step.stage_dir) / "train.log"
            rc = runner(step.command, step.env, train_log)
            if rc != 0:
                raise RuntimeError(f"stage {step.stage} ({step.name}) failed (rc={rc}); see {train_log}:\n"
                                   f"{_tail(train_log)}")
            if not marker.exists():
                raise RuntimeError(f"stage {step.stage} finished but {marker} is missing; see {train_log}")
            done.write_text(json.dumps(step_record(step), indent=1))
        metrics_file = Path(step.stage_dir) / "eval" / "metrics.json"
        if step.evaluate:
            if metrics_file.exists() and not cfg.force and done.exists():
                results[step.stage] = json.loads(metrics_file.read_text())
            else:
                results[step.stage] = evaluate_step(step, cfg, runner)
            log(f"[three_stage] stage {step.stage} accuracy: {results[step.stage]['accuracy']}")
    if results:
        (root / "summary.md").write_text(summary_table(results))
    return results


def summary_table(results: Mapping[int, Mapping[str, Any]]) -> str:
    """Markdown: one row per evaluated stage, accuracy per category (and the majority baseline overall)."""
    cats = sorted({c for m in results.values() for c in m["accuracy"]}, key=lambda c: (c == "overall", c))
    lines = ["| stage | " + " | ".join(cats) + " | majority (overall) |", "|---" * (len(cats) + 2) + "|"]
    for n, m in sorted(results.items()):
        cells = [f"{m['accuracy'].get(c, float('nan')):.1f}" for c in cats]
        lines.append(f"| {n} {STAGE_NAMES[n]} | " + " | ".join(cells) + f" | {m['majority']['overall']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI: settings from the environment; ``--dry-run`` (or ``DRY_RUN=1``) prints the plan; other args go
    to every stage."""
    args = list(sys.argv[1:] if argv is None else argv)
    dry = "--dry-run" in args or os.environ.get("DRY_RUN", "0") not in ("", "0")
    args = [a for a in args if a != "--dry-run"]
    try:
        cfg = config_from_env(os.environ, args)
        if dry:
            print(json.dumps([step_record(s) for s in build_plan(cfg)], indent=1))
            return 0
        run_plan(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"three_stage: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
