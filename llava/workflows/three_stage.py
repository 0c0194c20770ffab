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

Layout under ``OUTPUT_ROOT``: one folder per model, named after the chain that trained it:
``stage1``, ``stage1-2``, ``stage1-2-3`` for ``STAGES=1,2,3``; ``stage2``, ``stage2-3`` for ``STAGES=2,3``
(stage 2 from a fresh projector), so several chains share one root and a stage is shared between chains
only where the stages before it are the same. Each holds ``model/`` (the stage's ``OUTPUT_DIR``, with
``trainer_state.json``), ``train.log``, ``stage.json`` (written when the stage finished: the plan plus the
settings it trained with and checksums of its inputs, :mod:`llava.workflows.stage_records`) and, with
``EVAL_QUESTIONS``/``EVAL_ANSWERS``, ``eval/{answers.jsonl,metrics.json,settings.json,eval.log}``
(:mod:`llava.eval.model_vqa_loader` answers, :mod:`llava.eval.eval_spatial` exact match per category).
``plan.json`` lists every chain run into the root and every folder's record (always what the folders
hold); ``summary.md`` and its pictures (:mod:`llava.workflows.summary`) compare every chain there.

Reruns: a stage whose folder finished with identical settings is skipped; one with other settings (e.g. a
changed ``STAGE3_LR``, ``STAGE2_ARGS`` or data file contents) is refused before anything runs, with every
difference listed; ``FORCE=1`` reruns it and every later stage (folders of other chains that continue it
are moved aside to ``<folder>.stale``), ``FORCE=all`` reruns every stage of the chain. An unfinished stage
with the same settings resumes from its checkpoints.

Settings (environment): ``STAGES``, ``OUTPUT_ROOT``, ``MODEL_NAME``, ``DOMAIN_DATA``, ``DOMAIN_IMAGES``,
``STAGE{N}_SCRIPT|DATA|IMAGES|ARGS`` and ``STAGE{N}_<VAR>`` for VAR in :data:`STAGE_VARS` (e.g.
``STAGE1_MAX_STEPS``); ``INIT_PROJECTOR``, ``INIT_MODEL``; validation during training (the stage gets
``EVAL_DATA_PATH``/``EVAL_IMAGE_FOLDER``/``EVAL_STEPS``): ``DOMAIN_EVAL_DATA`` (stages 2, 3; images
``DOMAIN_EVAL_IMAGES``, default the stage's images), ``STAGE{N}_EVAL_DATA|EVAL_IMAGES|EVAL_STEPS``,
``EVAL_STEPS`` (default 100); held-out exact match after a stage: ``EVAL_QUESTIONS``, ``EVAL_ANSWERS``,
``EVAL_IMAGES``, ``EVAL_STAGES``, ``EVAL_BATCH_SIZE``, ``EVAL_MAX_NEW_TOKENS``, ``EVAL_CONV_MODE``; ``FORCE``;
``DEVICE`` and everything else the stage scripts read (``scripts/v1_5/_common.sh``) pass through, and
those in :data:`TRAINING_VARS` are recorded with the stage.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.workflows.held_out import eval_command as eval_command
from llava.workflows.held_out import held_out, log_tail
from llava.workflows.plan import (
    DEFAULT_EVAL_STEPS,
    DEFAULT_SCRIPTS,
    REPO,
    SCRIPT_KINDS,
    STAGE_NAMES,
    STAGE_VARS,
    TRAINING_VARS,
    EvalConfig,
    Runner,
    ScriptKind,
    StageConfig,
    StageStep,
    WorkflowConfig,
)
from llava.workflows.stage_records import (
    OUTPUT_MARKERS,
    Checksums,
    SettingsChanged,
    StageCheck,
    check_plan,
    finish_folder,
    move_aside,
    read_state,
    refusal,
    stage_settings,
    stale_folders,
    start_folder,
    update_state,
    write_state,
)
from llava.workflows.stage_records import step_record as step_record
from llava.workflows.summary import write_summary


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


def stage_configs_from_env(env: Mapping[str, str]) -> tuple[StageConfig, ...]:
    """Every stage's script, data, validation data and ``STAGE{N}_*`` settings from the environment."""
    pre_root = env.get("PRETRAIN_DATA_ROOT", "./playground/data/LLaVA-Pretrain")
    domain_data = env.get("DOMAIN_DATA", "./playground/data/slake/slake_train.json")
    domain_images = env.get("DOMAIN_IMAGES", "./playground/data/slake/imgs")
    defaults = {1: (f"{pre_root}/blip_laion_cc_sbu_558k.json", f"{pre_root}/images"),
                2: (domain_data, domain_images), 3: (domain_data, domain_images)}
    configs = []
    for n in STAGE_NAMES:
        data, images = defaults[n]
        image_folder = env.get(f"STAGE{n}_IMAGES", images)
        domain = n in (2, 3)
        eval_data = env.get(f"STAGE{n}_EVAL_DATA") or (env.get("DOMAIN_EVAL_DATA") if domain else None) or None
        eval_images = (env.get(f"STAGE{n}_EVAL_IMAGES") or (env.get("DOMAIN_EVAL_IMAGES") if domain else None)
                       or image_folder)
        configs.append(StageConfig(
            number=n, script=env.get(f"STAGE{n}_SCRIPT", DEFAULT_SCRIPTS[n]),
            data_path=env.get(f"STAGE{n}_DATA", data), image_folder=image_folder,
            env={v: env[f"STAGE{n}_{v}"] for v in STAGE_VARS if env.get(f"STAGE{n}_{v}")},
            args=tuple(shlex.split(env.get(f"STAGE{n}_ARGS", ""))), eval_data=eval_data,
            eval_images=eval_images if eval_data else None,
            eval_steps=env.get(f"STAGE{n}_EVAL_STEPS") or env.get("EVAL_STEPS") or DEFAULT_EVAL_STEPS))
    return tuple(configs)


def config_from_env(env: Mapping[str, str], addon_args: Sequence[str] = ()) -> WorkflowConfig:
    """Build the workflow config from environment variables (see the module docstring)."""
    stages = parse_stages(env.get("STAGES", "1,2,3"))
    for var, fix in (("EVAL_DATA_PATH", "DOMAIN_EVAL_DATA or STAGE{N}_EVAL_DATA"),
                     ("EVAL_IMAGE_FOLDER", "DOMAIN_EVAL_IMAGES or STAGE{N}_EVAL_IMAGES")):
        if env.get(var):
            raise ValueError(f"{var} is set per stage by the workflow; unset it and use {fix}")
    eval_cfg = None
    if env.get("EVAL_QUESTIONS") or env.get("EVAL_ANSWERS"):
        if not (env.get("EVAL_QUESTIONS") and env.get("EVAL_ANSWERS")):
            raise ValueError("set both EVAL_QUESTIONS (questions JSONL) and EVAL_ANSWERS (reference answers JSONL), "
                             "e.g. from llava.data.convert_slake --questions-out/--answers-out")
        eval_cfg = EvalConfig(env["EVAL_QUESTIONS"], env["EVAL_ANSWERS"],
                              env.get("EVAL_IMAGES", env.get("DOMAIN_IMAGES", "./playground/data/slake/imgs")),
                              int(env.get("EVAL_BATCH_SIZE", "8")), int(env.get("EVAL_MAX_NEW_TOKENS", "16")),
                              env.get("EVAL_CONV_MODE") or None)
    eval_stages = parse_stages(env["EVAL_STAGES"], "EVAL_STAGES") if env.get("EVAL_STAGES") else stages
    force = env.get("FORCE", "0").strip()
    return WorkflowConfig(
        stages=stages, output_root=env.get("OUTPUT_ROOT", "./checkpoints/three_stage"),
        stage_configs=stage_configs_from_env(env),
        base_model=env.get("MODEL_NAME", env.get("LLM_NAME", "lmsys/vicuna-13b-v1.5")),
        addon_args=tuple(addon_args), init_projector=env.get("INIT_PROJECTOR") or None,
        init_model=env.get("INIT_MODEL") or None, eval=eval_cfg, eval_stages=eval_stages,
        device=env.get("DEVICE", "gpu"), force=force not in ("", "0", "false", "False"),
        force_all=force.lower() == "all", inherited_env={v: env[v] for v in TRAINING_VARS if env.get(v)})


def _start_error(n: int, script: str, what: str, fix: str) -> ValueError:
    return ValueError(f"stage {n} ({Path(script).name}) {what}; {fix}")


def build_plan(cfg: WorkflowConfig) -> list[StageStep]:
    """The stage runs in order, each wired to the previous one's output (pure: runs nothing)."""
    root = Path(cfg.output_root).resolve()
    plan: list[StageStep] = []
    prev: StageStep | None = None
    for i, n in enumerate(cfg.stages):
        sc = cfg.stage(n)
        script, kind = resolve_script(sc.script)
        chain = "-".join(map(str, (*cfg.after, *cfg.stages[:i + 1])))
        stage_dir = root / f"stage{chain}"
        out = stage_dir / "model"
        env = {"DATA_PATH": sc.data_path, "IMAGE_FOLDER": sc.image_folder, "OUTPUT_DIR": str(out),
               "MODEL_NAME": cfg.base_model, **sc.env}
        if sc.eval_data:
            env.update(EVAL_DATA_PATH=sc.eval_data, EVAL_IMAGE_FOLDER=sc.eval_images or sc.image_folder,
                       EVAL_STEPS=sc.eval_steps or DEFAULT_EVAL_STEPS)
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
                         evaluate=cfg.eval is not None and n in cfg.eval_stages, chain=chain)
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


def train_step(check: StageCheck, cfg: WorkflowConfig, runner: Runner, sums: Checksums,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Run one stage whose check says it runs (``started.json`` first, ``stage.json`` once it finished);
    returns its finished record."""
    step = check.step
    check.record = {**step_record(step), "finished": False,
                    "settings": stage_settings(step, cfg.inherited_env, sums)}
    start_folder(check)
    log(f"[three_stage] stage {step.stage} ({step.name}): {Path(step.script).name} -> {step.output_dir}"
        + (f" (starts from {step.init_from})" if step.init_from else "") + f"; {check.reason}")
    train_log = Path(step.stage_dir) / "train.log"
    rc = runner(step.command, step.env, train_log)
    if rc != 0:
        raise RuntimeError(f"stage {step.stage} ({step.name}) failed (rc={rc}); see {train_log}:\n"
                           f"{log_tail(train_log)}")
    marker = Path(step.output_dir) / OUTPUT_MARKERS[step.kind.makes]
    if not marker.exists():
        raise RuntimeError(f"stage {step.stage} finished but {marker} is missing; see {train_log}")
    return finish_folder(check)


def run_plan(cfg: WorkflowConfig, runner: Runner = subprocess_runner,
             log: Callable[[str], None] = print) -> dict[int, dict[str, Any]]:
    """Check every stage against its folder (refusing changed settings unless ``cfg.force``), run the ones that
    need it, evaluate where asked, keep ``plan.json`` equal to the folders and write ``summary.md``; returns
    the held-out metrics per evaluated stage."""
    plan = build_plan(cfg)
    root = Path(cfg.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sums = Checksums(root / ".checksums.json", base=REPO)  # relative paths: as the stages see them
    checks = check_plan(plan, cfg.inherited_env, sums, cfg.force_all)
    stale = stale_folders(root, checks)
    message = refusal(checks, stale, cfg.output_root)
    if message and not cfg.force:
        raise SettingsChanged(message)
    for path in stale:
        log(f"[three_stage] {path.name} started from a stage that reruns; moved to {move_aside(path).name}")
    state = update_state(read_state(root), cfg.chain, checks, {p.name for p in stale})
    write_state(root, state)
    results: dict[int, dict[str, Any]] = {}
    try:
        for check in checks:
            step = check.step
            if check.action == "skip":
                log(f"[three_stage] stage {step.stage} ({step.name}) already finished in {step.output_dir} "
                    "with these settings; skipping")
            else:
                state["stages"][check.folder] = train_step(check, cfg, runner, sums, log)
                write_state(root, state)
            if step.evaluate:
                results[step.stage] = held_out(check, cfg, runner, sums)
                log(f"[three_stage] stage {step.stage} accuracy: {results[step.stage]['accuracy']}")
    finally:  # also after a failure: the summary must not show a folder that was just moved aside
        sums.save()
        log(f"[three_stage] summary: {write_summary(root, state)}")
    return results


def plan_preview(cfg: WorkflowConfig) -> list[dict[str, Any]]:
    """The dry run's output: every step's record with its settings and what a run would do (runs nothing)."""
    plan = build_plan(cfg)
    root = Path(cfg.output_root).resolve()
    checks = check_plan(plan, cfg.inherited_env, Checksums(base=REPO), cfg.force_all)
    message = refusal(checks, stale_folders(root, checks), cfg.output_root)
    out = []
    for c in checks:
        would = c.action if not (message and not cfg.force) else ("refused" if c.status == "changed" else "-")
        out.append({**step_record(c.step), "settings": c.record["settings"], "would": would,
                    "reason": c.reason, "differences": c.diffs})
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: settings from the environment; ``--dry-run`` (or ``DRY_RUN=1``) prints the plan; other args go
    to every stage."""
    args = list(sys.argv[1:] if argv is None else argv)
    dry = "--dry-run" in args or os.environ.get("DRY_RUN", "0") not in ("", "0")
    args = [a for a in args if a != "--dry-run"]
    try:
        cfg = config_from_env(os.environ, args)
        if dry:
            print(json.dumps(plan_preview(cfg), indent=1))
            return 0
        run_plan(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"three_stage: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
