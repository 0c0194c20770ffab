"""SLURM launch: node-list expansion, GPU counts, and the dry run of 2 nodes x 8 GPUs in a faked allocation."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from llava.utils import slurm

REPO = Path(__file__).resolve().parents[1]
FAKE = dict(SLURM_JOB_NODELIST="gpu-a[07-08]", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="8", SLURM_JOB_ID="4242",
            SLURM_SUBMIT_DIR="/shared/runs")


@pytest.mark.parametrize("spec,hosts", [
    ("node01", ["node01"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[9-11],b5", ["a9", "a10", "a11", "b5"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
])
def test_nodelist_expansion(spec, hosts):
    assert slurm.expand_nodelist(spec) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-03", "gpu01]", "gpu[x-2]", "gpu[3-1]"])
def test_bad_nodelists_are_refused(bad):
    with pytest.raises(slurm.SlurmError):
        slurm.expand_nodelist(bad)


@pytest.mark.parametrize("env,gpus", [
    (dict(SLURM_GPUS_ON_NODE="8"), 8), (dict(SLURM_GPUS_PER_NODE="a100:4"), 4),
    (dict(SLURM_GPUS_PER_NODE="gpu:2(x2)"), 2), (dict(SLURM_JOB_GPUS="0,1,2"), 3), ({}, None),
])
def test_gpus_per_node(env, gpus):
    assert slurm.gpus_per_node(env) == gpus


def _dry_run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(env)
    return subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "launch.sh"), "--dry-run", "--port", "29511", "--",
                           *command], env=full, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_dry_run_prints_each_nodes_exact_command_for_2_nodes_x_8_gpus():
    res = _dry_run(FAKE, "bash", "scripts/v1_5/finetune.sh", "--packing", "True")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    hostfile = "/shared/runs/.llava_hostfile_4242"
    assert lines[:3] == [f"# hostfile {hostfile}:", "#   gpu-a07 slots=8", "#   gpu-a08 slots=8"]
    common = "NUM_NODES=2 NUM_GPUS=8 MASTER_ADDR=gpu-a07 MASTER_PORT=29511"
    assert lines[3] == (f"[gpu-a07] HOSTFILE={hostfile} NODE_RANK=0 {common} bash scripts/v1_5/finetune.sh "
                        "--packing True")
    assert lines[4] == (f"[gpu-a08] HOSTFILE={hostfile} NODE_RANK=1 {common} bash scripts/v1_5/finetune.sh "
                        "--packing True")
    srun = shlex.split(lines[5].removeprefix("# run as: "))
    assert srun[:6] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c"]
    assert srun[6].startswith('NODE_RANK="$SLURM_NODEID" ')


def test_a_node_command_launches_deepspeed_without_ssh_at_its_rank(tmp_path):
    """What node 1 runs: the stage script hands its rank, the hostfile and the rendezvous to deepspeed."""
    plan = slurm.plan_from_env(FAKE, port=29511, hostfile=str(tmp_path / "hosts"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(plan.node_env(1), LAUNCHER="echo", MODEL_NAME="m", VISION_TOWER="v", DATA_PATH="d", IMAGE_FOLDER="i",
               OUTPUT_DIR=str(tmp_path / "out"), PRETRAIN_MM_MLP_ADAPTER="p")
    res = subprocess.run(["bash", "scripts/v1_5/finetune.sh"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    launched = res.stdout.split()
    for pair in (["--hostfile", str(tmp_path / "hosts")], ["--num_nodes", "2"], ["--num_gpus", "8"],
                 ["--master_addr", "gpu-a07"], ["--master_port", "29511"], ["--no_ssh", "--node_rank", "1"]):
        i = launched.index(pair[0])
        assert launched[i:i + len(pair)] == pair, launched


def test_missing_allocation_is_one_line(tmp_path):
    res = _dry_run({}, "bash", "scripts/v1_5/finetune.sh")
    assert res.returncode == 2 and res.stderr.startswith("error: SLURM_JOB_NODELIST is not set")
    assert len(res.stderr.strip().splitlines()) == 1
    res = _dry_run(dict(FAKE, SLURM_NNODES="3"), "bash", "scripts/v1_5/finetune.sh")
    assert res.returncode == 2 and "SLURM_NNODES=3" in res.stderr
    no_gpus = {k: v for k, v in FAKE.items() if k != "SLURM_GPUS_ON_NODE"}
    res = _dry_run(dict(no_gpus, DEVICE="gpu"), "bash", "x.sh")
    assert res.returncode == 2 and "--gpus-per-node" in res.stderr and "DEVICE=gpu" in res.stderr


def test_cpu_only_allocation_needs_no_flag():
    """No GPUs in the allocation: NUM_GPUS (default 1) processes per node, DEVICE=cpu, said once on stderr."""
    no_gpus = {k: v for k, v in FAKE.items() if k != "SLURM_GPUS_ON_NODE"}
    res = _dry_run(no_gpus, "bash", "scripts/v1_5/pretrain.sh")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1:3] == ["#   gpu-a07 slots=1", "#   gpu-a08 slots=1"]
    assert "NUM_GPUS=1 MASTER_ADDR=gpu-a07 MASTER_PORT=29511 DEVICE=cpu bash" in res.stdout
    assert res.stderr.count("no GPUs") == 1
    res = _dry_run(dict(no_gpus, NUM_GPUS="2"), "bash", "scripts/v1_5/pretrain.sh")
    assert "#   gpu-a07 slots=2" in res.stdout and "NUM_GPUS=2" in res.stdout
