"""Shared helpers for the end-to-end tests that run the real stage scripts under DeepSpeed on CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from llava.utils.deepspeed_shm import allreduce_buffer_path

REPO = Path(__file__).resolve().parents[1]
PROJECTOR_KEYS = sorted(f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias"))
STAGE_TIMEOUT_S = 420
TYPE_WARNING = "to instantiate a model of type"  # transformers' untyped-loading warning (issue 29): never printed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_env(**overrides: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DEVICE="cpu", NUM_GPUS="2", NUM_WORKERS="0", MODEL_MAX_LENGTH="256", REPORT_TO="none",
               BATCH_SIZE="4", GRAD_ACCUM="1", SAVE_TOTAL_LIMIT="1", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MASTER_PORT=str(_free_port()))
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def _start(script: str, log: Path, *args: str, **overrides: object) -> subprocess.Popen:
    """Start a stage script: a name under scripts/v1_5/ or a path relative to the repo root."""
    path = REPO / script if (REPO / script).is_file() else REPO / "scripts" / "v1_5" / script
    cmd = ["bash", str(path), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_stage_env(**overrides), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _run(script: str, log: Path, *args: str, **overrides: object) -> str:
    """Run a stage script to the end; assert it succeeded, left no DeepSpeed segment in /dev/shm and printed no
    untyped-loading warning."""
    overrides.setdefault("MASTER_PORT", _free_port())
    proc = _start(script, log, *args, **overrides)
    try:
        rc = proc.wait(timeout=STAGE_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, f"{script} failed (rc={rc}); log tail:\n{text[-4000:]}"
    leaked = [p for rank in range(int(overrides.get("NUM_GPUS", 2)))
              if (p := allreduce_buffer_path(rank, {"MASTER_ADDR": "127.0.0.1",
                                                     "MASTER_PORT": str(overrides["MASTER_PORT"])})).exists()]
    assert not leaked, f"{script} left DeepSpeed's shared-memory segments behind: {leaked}"
    assert TYPE_WARNING not in text, [line for line in text.splitlines() if TYPE_WARNING in line]
    return text


def _kill_once_saved(proc: subprocess.Popen, marker: Path, log: Path, poll_s: float = 0.2) -> None:
    """SIGKILL a running stage as soon as ``marker`` exists; assert it was written before the run ended."""
    import time

    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(poll_s)
    finished_early = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not finished_early, log.read_text()[-4000:]


def _losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def _global_step(output_dir: Path) -> int:
    return json.loads((output_dir / "trainer_state.json").read_text())["global_step"]


def _generate(model_path: str, image: str) -> str:
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(model_path, None, None, device="cpu")
    pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    prompt = "USER: <image>\nWhat shape is in the image? ASSISTANT:"
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    out = model.generate(ids, images=pixels, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] >= 1
    return tokenizer.decode(out[0], skip_special_tokens=True)
