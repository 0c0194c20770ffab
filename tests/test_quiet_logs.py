"""Loading a checkpoint is quiet: no LOAD REPORT for a full CLIP checkpoint's text half, no torchvision notice."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from llava.model.builder import load_pretrained_model
from llava.testing.tiny_llava import build_tiny_llava


@contextlib.contextmanager
def transformers_log() -> Iterator[io.StringIO]:
    """What transformers' loggers write (their handler holds the stderr of import time, which pytest replaced)."""
    from transformers.utils import logging as hf_logging

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger("transformers")
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # transformers' default; an earlier in-process train() may have changed it
    root.addHandler(handler)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(before)


def _printed(capfd, log: io.StringIO) -> str:
    out, err = capfd.readouterr()
    return out + err + log.getvalue()


def test_loading_a_tiny_checkpoint_prints_no_load_report(tiny_llama, tiny_clip, llama_tokenizer, tmp_path, capfd):
    model = build_tiny_llava(tiny_llama, tiny_clip)
    model.save_pretrained(tmp_path / "ckpt")
    llama_tokenizer.save_pretrained(tmp_path / "ckpt")
    capfd.readouterr()
    with transformers_log() as log:
        _, loaded, processor, _ = load_pretrained_model(str(tmp_path / "ckpt"), None, "llava-tiny", device="cpu")
    text = _printed(capfd, log)
    assert "LOAD REPORT" not in text and "UNEXPECTED" not in text, text[-2000:]
    assert "torchvision" not in text, text[-2000:]
    assert loaded.get_vision_tower().is_loaded and processor is not None


def test_a_vision_key_problem_is_still_reported(tiny_clip, tmp_path, capfd):
    """Only the text half is declared expected: a tower checkpoint missing vision weights still says so."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionModel

    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTowerModel

    broken = tmp_path / "clip"
    shutil.copytree(tiny_clip, broken)
    state = load_file(broken / "model.safetensors")
    del state["vision_model.post_layernorm.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()
    with transformers_log() as log:
        CLIPVisionTowerModel.from_pretrained(str(broken))
    text = _printed(capfd, log)
    assert "post_layernorm.weight" in text and "MISSING" in text, text[-2000:]
    assert "text_model" not in text
    with transformers_log() as log:
        CLIPVisionModel.from_pretrained(str(broken))  # the stock class reports the text half (the noise we drop)
    assert "text_model" in _printed(capfd, log)
