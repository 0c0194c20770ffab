"""Launch any stage script on a SLURM allocation: one DeepSpeed launcher per node, no ssh.

Inside an allocation (``sbatch scripts/slurm/train.sbatch`` or ``salloc``)::

    python -m llava.utils.slurm [--dry-run] [--port 29500] -- bash scripts/v1_5/finetune.sh [flags]

reads ``SLURM_JOB_NODELIST`` (expanded here: ``gpu[01-03,07],cpu5``), ``SLURM_NNODES`` and the GPUs per
node (``--gpus-per-node``, else ``SLURM_GPUS_ON_NODE`` / ``SLURM_GPUS_PER_NODE`` / ``SLURM_JOB_GPUS``; an
allocation without GPUs runs ``NUM_GPUS`` processes per node, default 1, with ``DEVICE=cpu``),
writes a DeepSpeed hostfile (``<node> slots=<gpus>`` per node) and starts, through ``srun`` (one task
per node), the stage script on every node with ``HOSTFILE``, ``NODE_RANK`` (DeepSpeed's
``--no_ssh --node_rank``), ``MASTER_ADDR`` (the first node), ``MASTER_PORT`` and ``NUM_GPUS`` set. The
hostfile is removed when the run ends (also when the job is cancelled).
``--dry-run`` prints the hostfile and each node's exact command instead of running anything.
A missing or inconsistent SLURM variable is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PORT = 29500


class SlurmError(ValueError):
    """The SLURM environment cannot describe a launch (missing or inconsistent variables)."""


def _split_top(spec: str) -> list[str]:
    """Split on commas outside brackets: ``a[1-2,4],b`` -> ``["a[1-2,4]", "b"]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            raise SlurmError(f"SLURM_JOB_NODELIST {spec!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth:
        raise SlurmError(f"SLURM_JOB_NODELIST {spec!r}: unbalanced '['")
    parts.append(spec[start:])
    return [p for p in parts if p]


def _expand_range(body: str) -> list[str]:
    """``01-03,07`` -> ``["01", "02", "03", "07"]`` (zero padding kept)."""
    out = []
    for item in body.split(","):
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise SlurmError(f"SLURM_JOB_NODELIST range {item!r} is not a number or a number range")
        if not hi:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise SlurmError(f"SLURM_JOB_NODELIST range {item!r} runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def expand_nodelist(spec: str) -> list[str]:
    """Host names of a SLURM node list, in order (what ``scontrol show hostnames`` prints)."""
    hosts: list[str] = []
    for part in _split_top(spec.strip()):
        names = [""]
        for literal, body in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", part):
            names = [n + literal for n in names]
            if body:
                names = [n + r for n in names for r in _expand_range(body)]
        hosts.extend(names)
    return hosts


def gpus_per_node(env: Mapping[str, str]) -> int | None:
    """GPUs per node from the allocation (``8``, ``gpu:8``, ``a100:8``, ``8(x2)``, or a device list), or None."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key)
        if value:
            match = re.search(r"(\d+)(?:\(x\d+\))?$", value.split(",")[0])
            if match:
                return int(match.group(1))
    devices = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS")
    return len(devices.split(",")) if devices else None


@dataclass(frozen=True)
class Plan:
    """Everything a launch needs: hosts, GPUs per host, rendezvous and the hostfile's path."""

    hosts: tuple[str, ...]
    gpus: int
    port: int
    hostfile: str
    cpu_only: bool = False

    def hostfile_text(self) -> str:
        return "".join(f"{h} slots={self.gpus}\n" for h in self.hosts)

    def node_env(self, rank: int) -> dict[str, str]:
        env = dict(HOSTFILE=self.hostfile, NODE_RANK=str(rank), NUM_NODES=str(len(self.hosts)),
                   NUM_GPUS=str(self.gpus), MASTER_ADDR=self.hosts[0], MASTER_PORT=str(self.port))
        return dict(env, DEVICE="cpu") if self.cpu_only else env

    def node_command(self, rank: int, command: Sequence[str]) -> str:
        """The shell command node ``rank`` runs."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.node_env(rank).items())
        return f"{prefix} {shlex.join(command)}"


def plan_from_env(env: Mapping[str, str], gpus: int | None = None, port: int | None = None,
                  hostfile: str | None = None) -> Plan:
    """The :class:`Plan` of the allocation described by ``env`` (raises :class:`SlurmError`)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmError("SLURM_JOB_NODELIST is not set: run inside an allocation (sbatch scripts/slurm/train.sbatch "
                         "or salloc), or set it by hand for --dry-run")
    hosts = expand_nodelist(nodelist)
    nnodes = env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
    if nnodes and int(nnodes) != len(hosts):
        raise SlurmError(f"SLURM_NNODES={nnodes} but SLURM_JOB_NODELIST={nodelist!r} names {len(hosts)} nodes")
    gpus = gpus if gpus is not None else gpus_per_node(env)
    if gpus is not None and gpus < 1:
        raise SlurmError(f"--gpus-per-node {gpus}: give a positive count")
    # a CPU-only allocation: NUM_GPUS processes per node (the stage scripts' variable; default 1) on DEVICE=cpu,
    # unless DEVICE says otherwise
    cpu_only = gpus is None and env.get("DEVICE", "cpu") == "cpu"
    if gpus is None and not cpu_only:
        raise SlurmError(f"DEVICE={env['DEVICE']} but the allocation has no GPUs (SLURM_GPUS_ON_NODE / "
                         "SLURM_GPUS_PER_NODE / SLURM_JOB_GPUS): request them (--gpus-per-node=8) or pass "
                         "--gpus-per-node")
    if gpus is None:
        gpus = int(env.get("NUM_GPUS") or 1)
    job = env.get("SLURM_JOB_ID", "nojob")
    hostfile = hostfile or os.path.join(env.get("SLURM_SUBMIT_DIR", "."), f".llava_hostfile_{job}")
    return Plan(hosts=tuple(hosts), gpus=gpus, port=port or DEFAULT_PORT, hostfile=hostfile, cpu_only=cpu_only)


def srun_command(plan: Plan, command: Sequence[str]) -> list[str]:
    """``srun`` running ``command`` once per node; each task takes its node rank from ``SLURM_NODEID``."""
    env = {k: v for k, v in plan.node_env(0).items() if k != "NODE_RANK"}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    inner = f'NODE_RANK="$SLURM_NODEID" {exports} {shlex.join(command)}'
    return ["srun", f"--nodes={len(plan.hosts)}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c", inner]


def main(argv: Sequence[str] | None = None) -> int:
    """Dry-run or run a stage script on the allocation; 2 on a user error."""
    parser = argparse.ArgumentParser(prog="python -m llava.utils.slurm", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the hostfile and every node's command")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="override the allocation's GPU count")
    parser.add_argument("--port", type=int, default=None, help=f"MASTER_PORT (default {DEFAULT_PORT})")
    parser.add_argument("--hostfile", default=None, help="where to write the hostfile (default: submit dir)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- bash scripts/v1_5/<stage>.sh [flags]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not command:
            raise SlurmError("no stage command given: append -- bash scripts/v1_5/finetune.sh [flags]")
        plan = plan_from_env(os.environ, args.gpus_per_node, args.port, args.hostfile)
    except (SlurmError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if plan.cpu_only:
        print(f"note: the allocation has no GPUs: {plan.gpus} process(es) per node with DEVICE=cpu (for GPUs request "
              "them, e.g. --gpus-per-node=8, or pass --gpus-per-node)", file=sys.stderr)
    if args.dry_run:
        print(f"# hostfile {plan.hostfile}:")
        print("".join(f"#   {line}\n" for line in plan.hostfile_text().splitlines()), end="")
        for rank, host in enumerate(plan.hosts):
            print(f"[{host}] {plan.node_command(rank, command)}")
        print(f"# run as: {shlex.join(srun_command(plan, command))}")
        return 0
    return run_plan(plan, command)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_plan(plan: Plan, command: Sequence[str]) -> int:
    """Write the hostfile, run ``srun``, and remove the hostfile afterwards (also on scancel's SIGTERM)."""
    from llava.utils.atomic import atomic_write_text

    signal.signal(signal.SIGTERM, _stop)
    atomic_write_text(plan.hostfile, plan.hostfile_text())
    try:
        return subprocess.call(srun_command(plan, command))
    finally:
        if os.path.exists(plan.hostfile):
            os.remove(plan.hostfile)


if __name__ == "__main__":
    raise SystemExit(main())
