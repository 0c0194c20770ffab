"""GPU check part ``train``: stage 1 (projector) then stage 2 (full finetune) through ``llava.train.train``.

One process, no DeepSpeed: ``python -m llava.train.train`` on the tiny Llama + CLIP tower and the tiny
shapes dataset (:mod:`llava.testing.shapes_data`), bf16 on a GPU (fp32 on a CPU). Asserts the loss goes
down in each stage (mean of the last steps below the mean of the first), that stage 2 starts from stage
1's ``mm_projector.bin``, and that the final checkpoint loads back with ``load_pretrained_model`` and
generates. Losses -> ``OUT/train.json``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu_common import parse_part_args, part_parser, tiny_paths, write_result

WINDOW = 3  # steps averaged at each end of a stage to call the loss "down"


def stage_args(stage: int, paths: dict[str, str], data: Any, out: Path, device: str, quick: bool,
               projector: Path | None) -> list[str]:
    """The command line of one stage (as scripts/v1_5/pretrain.sh / finetune.sh, one device, no DeepSpeed)."""
    steps = 12 if quick else 40
    common = ["--model_name_or_path", paths["llama"], "--vision_tower", paths["clip"],
              "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
              "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
              "--image_folder", data.image_folder, "--output_dir", str(out), "--max_steps", str(steps),
              "--per_device_train_batch_size", "4" if quick else "8", "--gradient_accumulation_steps", "1",
              "--save_strategy", "no", "--logging_steps", "1", "--model_max_length", "256",
              "--dataloader_num_workers", "0", "--report_to", "none", "--lr_scheduler_type", "constant",
              "--weight_decay", "0.", "--seed", "0", "--gradient_checkpointing", "True",
              *(["--use_cpu", "True"] if device == "cpu" else ["--bf16", "True", "--tf32", "True"])]
    if stage == 1:
        return [*common, "--version", "plain", "--data_path", data.pretrain_json, "--tune_mm_mlp_adapter", "True",
                "--learning_rate", "1e-2"]
    return [*common, "--version", "v1", "--data_path", data.finetune_json, "--pretrain_mm_mlp_adapter",
            str(projector), "--image_aspect_ratio", "pad", "--learning_rate", "2e-3"]


def run_stage(args: list[str], log: Path) -> list[float]:
    """Run one stage to the end (it raises on a non-zero exit); its logged losses."""
    with log.open("w") as f:
        res = subprocess.run([sys.executable, "-m", "llava.train.train", *args], stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"training exited {res.returncode}; log tail:\n{tail}")
    out = Path(args[args.index("--output_dir") + 1])
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def went_down(losses: list[float]) -> bool:
    """Mean of the last :data:`WINDOW` losses below the mean of the first."""
    return len(losses) >= 2 * WINDOW and statistics.mean(losses[-WINDOW:]) < statistics.mean(losses[:WINDOW])


def load_and_generate(model_path: str, image: str, device: str) -> str:
    """Load the final checkpoint as users do and greedily generate a few tokens about ``image``."""
    import torch
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer, model, processor, _ = load_pretrained_model(model_path, None, None, device=device, torch_dtype=dtype)
    pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    prompt = "USER: <image>\nWhat shape is in the image? ASSISTANT:"
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    with torch.no_grad():
        gen = model.generate(ids.to(device), images=pixels.to(device, dtype), max_new_tokens=6, do_sample=False)
    if gen.shape[0] != 1 or gen.shape[1] < 1:
        raise RuntimeError(f"generate returned shape {tuple(gen.shape)}")
    return tokenizer.decode(gen[0], skip_special_tokens=True)


def main() -> None:
    a = parse_part_args(part_parser(__doc__.splitlines()[0]))
    from llava.testing.shapes_data import write_shapes_dataset

    work, logs = Path(a.work), Path(a.out) / "logs"
    paths = tiny_paths(work)
    data = write_shapes_dataset(work / "shapes", n=32 if a.quick else 96)
    numbers: dict[str, Any] = {}
    report: dict[str, Any] = dict(device=a.device)
    ok, detail = False, ""
    try:
        start = time.monotonic()
        s1 = run_stage(stage_args(1, paths, data, work / "stage1", a.device, a.quick, None), logs / "train_stage1.log")
        numbers.update(stage1_loss_first=s1[0], stage1_loss_last=s1[-1], stage1_s=round(time.monotonic() - start, 1))
        projector = work / "stage1" / "mm_projector.bin"
        if not projector.exists():
            raise RuntimeError("stage 1 wrote no mm_projector.bin")
        start = time.monotonic()
        s2 = run_stage(stage_args(2, paths, data, work / "stage2", a.device, a.quick, projector),
                       logs / "train_stage2.log")
        numbers.update(stage2_loss_first=s2[0], stage2_loss_last=s2[-1], stage2_s=round(time.monotonic() - start, 1))
        report.update(stage1_losses=s1, stage2_losses=s2)
        text = load_and_generate(str(work / "stage2"), str(Path(data.image_folder) / "000.png"), a.device)
        report["generated"] = text
        down = {1: went_down(s1), 2: went_down(s2)}
        ok = all(down.values())
        detail = "" if ok else "loss did not go down in stage " + ",".join(str(k) for k, v in down.items() if not v)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        detail = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        report["error"] = str(err)
    Path(a.out, "train.json").write_text(json.dumps(dict(report, numbers=numbers, ok=ok), indent=1))
    print(json.dumps(dict(report, numbers=numbers), indent=1))
    write_result(a.out, "train", ok, numbers, detail)


if __name__ == "__main__":
    main()
