"""No code from checkpoints: manifest digests and the restricted unpickle refuse planted payloads."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

from llava.train.checkpoint_trust import (
    CONVERTER_WARNING,
    MANIFEST,
    UntrustedCheckpointError,
    mark_converter_scripts,
    verify_checkpoint,
    write_manifest,
)

READ_ON_RESUME = ("global_step4/mp_rank_00_model_states.pt", "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                  "rng_state.pth", "scheduler.pt", "optimizer.pt", "mm_projector.bin", "non_lora_trainables.bin")


class Payload:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _checkpoint(folder: Path) -> Path:
    ck = folder / "checkpoint-4"
    (ck / "global_step4").mkdir(parents=True)
    for rel in READ_ON_RESUME:
        torch.save({"w": torch.ones(2), "step": 4, "names": ["a"]}, ck / rel)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (ck / "zero_to_fp32.py").write_text("#!/usr/bin/env python\nimport torch\n")
    mark_converter_scripts(ck)
    write_manifest(ck)
    return ck


def test_clean_checkpoint_passes_and_converter_is_marked(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path)
    verify_checkpoint(ck)
    script = (ck / "zero_to_fp32.py").read_text()
    assert script.startswith("#!/usr/bin/env python\n" + CONVERTER_WARNING) and script.count("WARNING") == 1
    mark_converter_scripts(ck)  # idempotent
    assert (ck / "zero_to_fp32.py").read_text() == script


@pytest.mark.parametrize("rel", READ_ON_RESUME)
@pytest.mark.parametrize("manifest", ["kept", "rewritten"])
def test_planted_payload_is_refused_and_never_runs(tmp_path: Path, rel: str, manifest: str) -> None:
    ck = _checkpoint(tmp_path)
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, ck / rel)
    if manifest == "rewritten":  # an attacker who also rewrites the manifest meets the restricted unpickle
        write_manifest(ck)
        expected = "needs more than tensors and plain data to unpickle"
    else:
        expected = "does not match its SHA-256"
    with pytest.raises(UntrustedCheckpointError, match=expected) as err:
        verify_checkpoint(ck)
    assert rel.split("/")[-1] in str(err.value) and "--trust_checkpoint True" in str(err.value)
    assert not marker.exists()


def test_unlisted_or_missing_files_and_no_manifest(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path)
    torch.save({"w": torch.ones(1)}, ck / "extra.pt")
    with pytest.raises(UntrustedCheckpointError, match=r"extra\.pt is not in llava_manifest\.json"):
        verify_checkpoint(ck)
    (ck / "extra.pt").unlink()
    (ck / "scheduler.pt").unlink()
    with pytest.raises(UntrustedCheckpointError, match=r"scheduler\.pt is listed in llava_manifest\.json but missing"):
        verify_checkpoint(ck)
    (ck / MANIFEST).unlink()
    with pytest.raises(UntrustedCheckpointError, match=r"has no llava_manifest\.json"):
        verify_checkpoint(ck)
    verify_checkpoint(ck, trust=True)  # deliberate override


def test_training_args_bin_is_digested_not_unpickled(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path)
    marker = tmp_path / "PWNED"
    torch.save(Payload(marker), ck / "training_args.bin")  # HF pickles TrainingArguments; resume never reads it
    write_manifest(ck)
    verify_checkpoint(ck)
    assert not marker.exists()
