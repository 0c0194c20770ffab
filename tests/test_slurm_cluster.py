"""SLURM for real: a one-node cluster on localhost (scripts/slurm/local_cluster.sh: munged, slurmctld, slurmd from
the distribution's packages) runs ``sbatch`` -> scripts/slurm/launch.sh -> pretrain.sh on a CPU-only allocation
with no extra flag, trains 2 steps and leaves no hostfile behind. Skipped where the packages are not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from e2e_helpers import REPO, STAGE_TIMEOUT_S, _free_port, _losses, _stage_env
from helpers_data import write_shapes_dataset

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
MISSING = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"SLURM/munge not installed ({', '.join(MISSING)} missing): "
                                             "apt-get install slurm-wlm munge (.ci/run tries it)"),
]
CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.sh"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a fresh local cluster (own folder and ports), stopped afterwards."""
    folder = Path(f"/tmp/llava-slurm-test-{uuid.uuid4().hex[:8]}")  # short: munge's socket path has a length limit
    env = dict(os.environ, LLAVA_SLURM_DIR=str(folder), LLAVA_SLURM_PORT=str(_free_port()))
    up = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield str(folder / "slurm.conf")
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, text=True, timeout=60)
        status = subprocess.run(["bash", str(CLUSTER), "status"], env=env, capture_output=True, text=True)
        shutil.rmtree(folder, ignore_errors=True)
        assert status.stdout.count("stopped") == 3, status.stdout


def test_sbatch_launch_pretrain_on_cpu_only_allocation(cluster, tmp_path, tiny_llama, tiny_clip):
    data = write_shapes_dataset(tmp_path / "data", n=8, text_only=0)
    out, log, submit = tmp_path / "out", tmp_path / "job.log", tmp_path / "submit"
    submit.mkdir()
    env = _stage_env(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder,
                     DATA_PATH=data.pretrain_json, OUTPUT_DIR=out, MAX_STEPS=2, SAVE_STEPS=2, BATCH_SIZE=2, LR=1e-2,
                     SLURM_CONF=cluster)
    for key in ("DEVICE", "NUM_GPUS", "MASTER_PORT"):  # nothing GPU- or CPU-specific: the launcher decides
        env.pop(key)
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_JOB", "SLURM_NODELIST"))}
    wrap = (f"bash {REPO}/scripts/slurm/launch.sh --port {_free_port()} -- "
            f"bash {REPO}/scripts/v1_5/pretrain.sh")
    job = subprocess.run(["sbatch", "--wait", "-N1", "-c1", f"--chdir={submit}", f"--output={log}", "--wrap", wrap],
                         env=env, capture_output=True, text=True, timeout=STAGE_TIMEOUT_S)
    text = log.read_text() if log.exists() else ""
    assert job.returncode == 0, job.stdout + job.stderr + text[-4000:]
    assert "Submitted batch job" in job.stdout
    assert text.count("the allocation has no GPUs") == 1 and "DEVICE=cpu" in text
    assert len(_losses(out)) == 2, text[-3000:]
    assert (out / "mm_projector.bin").is_file()
    assert not list(submit.glob(".llava_hostfile_*")), "the hostfile was left in the submit directory"
    assert "to instantiate a model of type" not in text  # the stage's whole output
