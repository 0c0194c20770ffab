"""DeepSpeed's CPU all-reduce segment: its name, and that it is unlinked once the process group is up."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist

from llava.utils.deepspeed_shm import allreduce_buffer_path, release_allreduce_buffer


def test_segment_name_follows_deepspeed(tmp_path: Path) -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert allreduce_buffer_path(1, env, tmp_path) == (
        tmp_path / f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_29500_1")


def test_noop_off_cpu_accelerator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert release_allreduce_buffer(tmp_path) is None


def test_unlinks_own_segment_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    own, other = allreduce_buffer_path(0, root=tmp_path), allreduce_buffer_path(1, root=tmp_path)
    own.write_bytes(b"x")
    other.write_bytes(b"x")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert release_allreduce_buffer(tmp_path) == own
    finally:
        dist.destroy_process_group()
    assert not own.exists() and other.exists()
