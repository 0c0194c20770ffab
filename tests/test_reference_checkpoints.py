"""Beyond Semantics reference checkpoints load through our loader with the reference's logits and tokens.

Tiny checkpoints are built in the reference's layout from its documented key names and config
fields (``NormalizedProjector`` -> ``mm_projector.projector.*`` + ``mm_projector.norm.weight``,
``PoolingProjector`` -> ``mm_projector.proj.*``, registers -> ``mm_projector.registers``; every
add-on field and ``num_vision_tokens`` in ``config.json``; ``final_spatial_size`` a side;
``mm_hidden_size`` the tower width). The expected outputs come from an independent
re-implementation of the reference forward written here from those formulas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel, LlamaForCausalLM

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.testing.tiny_llava import build_tiny_llava
from llava.testing.tiny_models import build_clip

IDS = torch.tensor([[1, IMAGE_TOKEN_INDEX, 20, 21, 22]])
CASES = {  # name: (normalize, multilayer, pooling side or None, registers)
    "normWmean": (True, False, None, False),
    "multilayerNorm": (True, True, None, False),
    "norm_pool": (True, False, 2, False),
    "registers": (False, False, None, True),
}


@pytest.fixture(scope="module")
def clip24(tmp_path_factory):
    """24 layers (the reference hard-codes layers 12, 16, 20, 24), width 16: 4 layers x 16 = the LLM's 64."""
    return build_clip(tmp_path_factory.mktemp("clip24"), num_layers=24, hidden=16, image_size=32, patch_size=8)


@pytest.fixture()
def pixels():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _reference_weights(case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(raw weights by role, the same tensors under the reference's state-dict keys)."""
    normalize, multilayer, pool, registers = CASES[case]
    gen = torch.Generator().manual_seed(7)
    d_in = 64 if multilayer else 16
    raw = {"w0": torch.randn(64, d_in, generator=gen) * 0.3, "b0": torch.randn(64, generator=gen) * 0.1,
           "w2": torch.randn(64, 64, generator=gen) * 0.2, "b2": torch.randn(64, generator=gen) * 0.1,
           "norm": 1.0 + 0.2 * torch.randn(64, generator=gen), "registers": torch.randn(1, 4, 64, generator=gen)}
    inner = "model.mm_projector." + ("proj." if pool else "")
    base = inner + "projector." * (int(normalize) + int(registers))
    keyed = {f"{base}0.weight": raw["w0"], f"{base}0.bias": raw["b0"], f"{base}2.weight": raw["w2"],
             f"{base}2.bias": raw["b2"]}
    if normalize:
        keyed[f"{inner}norm.weight"] = raw["norm"]
    if registers:
        keyed["model.mm_projector.projector.registers"] = raw["registers"]
    return raw, keyed


def _reference_config(case: str, llm: str, tower: str) -> dict:
    normalize, multilayer, pool, registers = CASES[case]
    cfg = json.loads((Path(llm) / "config.json").read_text())
    cfg.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"], mm_vision_tower=tower,
               mm_hidden_size=16, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", mm_patch_merge_type="flat", use_mm_proj=True,
               image_aspect_ratio="pad", tokenizer_padding_side="right", tokenizer_model_max_length=2048,
               tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, mm_use_im_start_end=False,
               mm_use_im_patch_token=False, add_spatial_coordinates=False, compression_after_projection=bool(pool),
               final_spatial_size=pool or 16, add_registers=registers, num_registers=4,
               normalize_projector=normalize, use_multilayer_features=multilayer, num_vision_tokens=16)
    return cfg


def _write(case: str, kind: str, root: Path, llm: str, tower: str) -> Path:
    out = root / f"{case}-{kind}"
    out.mkdir()
    _, keyed = _reference_weights(case)
    (out / "config.json").write_text(json.dumps(_reference_config(case, llm, tower)))
    if kind == "projector_only":
        torch.save(keyed, out / "mm_projector.bin")
    else:
        save_file({**load_file(str(Path(llm) / "model.safetensors")), **keyed}, str(out / "model.safetensors"))
        for f in Path(llm).iterdir():  # the tokenizer files
            if f.is_file() and f.name not in ("config.json", "model.safetensors", "generation_config.json"):
                shutil.copy(f, out / f.name)
    return out


def _reference_image_tokens(case: str, tower: str, pixels: torch.Tensor) -> torch.Tensor:
    """The reference's encode_images, re-implemented from its formulas."""
    normalize, multilayer, pool, _ = CASES[case]
    raw, _ = _reference_weights(case)
    clip = CLIPVisionModel.from_pretrained(tower)
    hs = clip(pixels, output_hidden_states=True).hidden_states
    if multilayer:
        feats = torch.cat([clip.post_layernorm(hs[i]) for i in (12, 16, 20, 24)], dim=-1)[:, 1:]
    else:
        feats = hs[-2][:, 1:]
    x = F.linear(F.gelu(F.linear(feats, raw["w0"], raw["b0"])), raw["w2"], raw["b2"])
    if normalize:
        r = raw["norm"] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
        n = r.norm(dim=-1, keepdim=True)
        x = 0.83 * (r * torch.minimum(1.22 / n, torch.ones_like(n)))
    if pool:
        grid = x.transpose(1, 2).reshape(1, 64, 4, 4)
        x = F.adaptive_avg_pool2d(grid, pool).reshape(1, 64, -1).transpose(1, 2)
    return x  # the reference slices its registers off: they never reach the LLM


def _reference_run(llm_path: str, image_tokens: torch.Tensor, steps: int = 4) -> tuple[torch.Tensor, list[int]]:
    llm = LlamaForCausalLM.from_pretrained(llm_path).eval()
    emb = llm.get_input_embeddings()
    seq = torch.cat([emb(IDS[0, :1]), image_tokens[0], emb(IDS[0, 2:])]).unsqueeze(0)
    logits = llm(inputs_embeds=seq).logits
    tokens = []
    for _ in range(steps):
        nxt = int(llm(inputs_embeds=seq).logits[0, -1].argmax())
        tokens.append(nxt)
        seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], dim=1)
    return logits, tokens


@pytest.mark.parametrize("kind", ["full", "projector_only"])
@pytest.mark.parametrize("case", list(CASES))
def test_reference_checkpoint_matches_the_reference_forward(case, kind, tmp_path, tiny_llama, clip24, pixels,
                                                            caplog):
    path = _write(case, kind, tmp_path, tiny_llama, clip24)
    with caplog.at_level("WARNING", logger="llava.model.reference_layout"):
        _, model, _, _ = load_pretrained_model(str(path), tiny_llama if kind == "projector_only" else None,
                                               device="cpu")
    mapped = [r for r in caplog.records if "reference checkpoint" in r.getMessage()]
    assert len(mapped) == 1, caplog.text
    with torch.no_grad():
        expected_logits, expected_tokens = _reference_run(tiny_llama, _reference_image_tokens(case, clip24, pixels))
        logits = model(input_ids=IDS, images=pixels).logits
        torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
        tokens = model.generate(IDS, images=pixels, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert tokens[0].tolist() == expected_tokens
    assert not hasattr(model.get_model(), "mm_registers")  # the reference never fed its registers


def test_reference_adapter_for_training(tmp_path, tiny_llama, clip24, pixels):
    """``--pretrain_mm_mlp_adapter`` with a reference stage-1 output (mm_projector.bin + config.json)."""
    path = _write("multilayerNorm", "projector_only", tmp_path, tiny_llama, clip24)
    model = build_tiny_llava(tiny_llama, clip24, pretrain_mm_mlp_adapter=str(path / "mm_projector.bin"),
                             normalize_projector=True, mm_norm_style="reference", use_multilayer_features=True,
                             mm_multilayer_select="12,16,20,24", mm_multilayer_post_norm=True)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(pixels),
                                   _reference_image_tokens("multilayerNorm", clip24, pixels), atol=1e-6, rtol=1e-6)


def test_the_2d_model_is_refused(tmp_path, tiny_llama, clip24):
    path = _write("normWmean", "projector_only", tmp_path, tiny_llama, clip24)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "llava_llama2d"}))
    message = (f"{path}: model_type 'llava_llama2d' is the reference's 2D-position model (LlamaHybridModel with its "
               "hybrid rotary embedding), which has no equivalent here and cannot be mapped; train ours with "
               "--twoD_vision_embedding instead.")
    with pytest.raises(ValueError) as err:
        load_pretrained_model(str(path), tiny_llama, device="cpu")
    assert str(err.value) == message
    with pytest.raises(ValueError, match="is the reference's 2D-position model"):
        build_tiny_llava(tiny_llama, clip24, pretrain_mm_mlp_adapter=str(path / "mm_projector.bin"))


def test_unrunnable_reference_combinations_are_refused(tmp_path, tiny_llama, clip24):
    path = _write("registers", "projector_only", tmp_path, tiny_llama, clip24)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "normalize_projector": True}))
    with pytest.raises(ValueError, match="add_registers together with normalize/compression/coordinates cannot be "
                                         "mapped"):
        load_pretrained_model(str(path), tiny_llama, device="cpu")
