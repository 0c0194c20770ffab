"""Stop DeepSpeed's CPU backend from leaking a 66 MiB shared-memory file per launch.

With ``DS_ACCELERATOR=cpu`` DeepSpeed's communication op (``deepspeed_shm_comm``) creates one POSIX
shared-memory segment per rank, ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``,
maps its peers' segments, and never unlinks its own: every launch leaves 66 MiB of RAM (tmpfs)
behind, even after a clean exit. A test suite or a demo that launches DeepSpeed on random ports
fills ``/dev/shm`` until training runs are killed for memory (seen here: 270 files, 18 GiB).

Unlinking a segment's name after every rank has mapped it is safe: the mappings stay valid until
the processes exit, and the kernel frees the memory then, crash or not. :func:`release_allreduce_buffer`
does that once the process group is up (a barrier first, so no peer is still looking for the name).
"""

from __future__ import annotations

import os
from pathlib import Path

SHM_ROOT = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"


def allreduce_buffer_path(rank: int, env: dict[str, str] | None = None, root: Path = SHM_ROOT) -> Path:
    """The segment DeepSpeed's CPU backend creates for ``rank`` (named from MASTER_ADDR/MASTER_PORT)."""
    env = dict(os.environ) if env is None else env
    return root / f"{PREFIX}_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{rank}"


def release_allreduce_buffer(root: Path = SHM_ROOT) -> Path | None:
    """Unlink this rank's CPU all-reduce segment once every rank has mapped it; return the path removed.

    A no-op (``None``) off the CPU accelerator, without a process group, or when the file is absent.
    """
    import torch.distributed as dist

    if os.environ.get("DS_ACCELERATOR") != "cpu" or not (dist.is_available() and dist.is_initialized()):
        return None
    dist.barrier()  # every rank has finished mapping its peers' segments before any name goes
    path = allreduce_buffer_path(dist.get_rank(), root=root)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
