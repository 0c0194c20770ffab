"""Save -> load_pretrained_model round trips give identical logits (full, LoRA + base, projector-only)."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import detect_checkpoint_kind, load_pretrained_model
from llava.model.checkpoints import NON_LORA_FILE, save_mm_projector
from llava.testing.tiny_llava import build_tiny_llava
from llava.utils.atomic import atomic_torch_save

IDS = torch.tensor([[1, IMAGE_TOKEN_INDEX, 20, 21, 22, 23]])


def _logits(model, images):
    with torch.no_grad():
        return model(input_ids=IDS, images=images).logits


@pytest.fixture()
def images():
    torch.manual_seed(3)
    return torch.randn(1, 3, 32, 32)


def test_full_checkpoint_round_trip(tmp_path, tiny_llama, tiny_clip, llama_tokenizer, images):
    model = build_tiny_llava(tiny_llama, tiny_clip)
    model.save_pretrained(tmp_path)
    llama_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert detect_checkpoint_kind(tmp_path) == "full"
    tok, loaded, proc, ctx = load_pretrained_model(str(tmp_path), None, "whatever-name", device="cpu")
    assert type(loaded).__name__ == "LlavaLlamaForCausalLM"
    assert proc is not None and ctx == 2048 and len(tok) == len(llama_tokenizer)
    torch.testing.assert_close(_logits(loaded, images), _logits(model, images), atol=0, rtol=0)


def test_projector_only_round_trip(tmp_path, tiny_llama, tiny_clip, images):
    model = build_tiny_llava(tiny_llama, tiny_clip, seed=5)
    save_mm_projector(model, tmp_path)
    state = torch.load(tmp_path / "mm_projector.bin", weights_only=True)
    assert sorted(state) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                             "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    # a folder whose name says "lora" is still recognised by its files
    named = tmp_path.parent / f"{tmp_path.name}-llava-lora"
    tmp_path.rename(named)
    assert detect_checkpoint_kind(named) == "projector_only"
    with pytest.raises(ValueError, match="holds a projector-only checkpoint; pass the base LLM"):
        load_pretrained_model(str(named), None, device="cpu")
    _, loaded, _, _ = load_pretrained_model(str(named), tiny_llama, device="cpu")
    torch.testing.assert_close(_logits(loaded, images), _logits(model, images), atol=0, rtol=0)


def test_lora_round_trip_merges(tmp_path, tiny_llama, tiny_clip, llama_tokenizer, images):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_llava(tiny_llama, tiny_clip, seed=7)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                     target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj")
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.eval()
    expected = _logits(peft_model, images)
    peft_model.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    llama_tokenizer.save_pretrained(tmp_path)
    projector = {id(p) for p in model.get_model().mm_projector.parameters()}
    non_lora = {k: v.detach().clone() for k, v in peft_model.named_parameters() if id(v) in projector}
    atomic_torch_save(non_lora, tmp_path / NON_LORA_FILE)
    assert detect_checkpoint_kind(tmp_path) == "lora"
    _, loaded, _, _ = load_pretrained_model(str(tmp_path), tiny_llama, device="cpu")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(_logits(loaded, images), expected, atol=1e-5, rtol=1e-5)


def test_projector_shape_mismatch_is_explained(tmp_path, tiny_llama, tiny_clip):
    from llava.model.checkpoints import load_mm_projector

    model = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear")
    save_mm_projector(model, tmp_path)
    other = build_tiny_llava(tiny_llama, tiny_clip, projector_type="mlp2x_gelu")
    with pytest.raises(ValueError, match=r"keys do not match the model\. Missing: \['0.bias', '0.weight', "
                                         r"'2.bias', '2.weight'\]; unexpected: \['bias', 'weight'\]"):
        load_mm_projector(other.get_model().mm_projector, tmp_path / "mm_projector.bin")
