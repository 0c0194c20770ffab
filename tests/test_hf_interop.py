"""llava-hf interop: ours -> LlavaForConditionalGeneration with equal logits, refusals, hf -> ours, round trip."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images
from llava.model.builder import load_pretrained_model
from llava.model.hf_interop import (
    HfInteropError,
    check_hf_config,
    convert_from_hf,
    convert_to_hf,
    to_hf_state_dict,
    vicuna_chat_template,
    vision_spec,
)
from llava.testing.tiny_llava import build_tiny_llava

VARIANTS = {  # LLM, flags, expected (vision_feature_layer, vision_feature_select_strategy)
    "vanilla": ("llama", {}, (-2, "default")),
    "multilayer": ("llama", dict(use_multilayer_features=True, mm_multilayer_select="0,2,-1"), ([0, 2, -1], "default")),
    "cls_patch": ("llama", dict(mm_vision_select_feature="cls_patch"), (-2, "full")),
    "qwen2": ("qwen2", {}, (-2, "default")),  # its tokenizer has a (ChatML) chat template: kept
}
REFUSED = {  # the name the message must contain -> flags
    "normalize_projector": dict(normalize_projector=True),
    "compression_after_projection": dict(compression_after_projection=True, final_spatial_size=4),
    "twoD_vision_embedding": dict(twoD_vision_embedding=True),
    "interleave": dict(interleave=True, interleave_sparsity=4),
    "add_spatial_coordinates": dict(add_spatial_coordinates=True),
    "add_registers": dict(add_registers=True),
    "permute_image_tokens": dict(permute_image_tokens=True),
    "mm_multilayer_post_norm": dict(use_multilayer_features=True, mm_multilayer_select="1,2",
                                    mm_multilayer_post_norm=True),
    "mm_projector_type 'linear'": dict(projector_type="linear"),
}
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
STRING_MESSAGES = [{"role": "user", "content": "<image>\nWhat is red?"}]
TEXTS = ("What is red? ASSISTANT: a circle</s>", "hello <image> 3,4 (1, 2)")


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _save_ours(path: Path, tiny_llama: str, tiny_clip: str, tokenizer, **flags) -> str:
    build_tiny_llava(tiny_llama, tiny_clip, **flags).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _image() -> Image.Image:
    """A non-square image, so padding to a square matters."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 48, 3), dtype=np.uint8))


def _ours_ids(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """The processor's ids with each run of image tokens collapsed into our placeholder (-200)."""
    ids = input_ids[0].tolist()
    out = [IMAGE_TOKEN_INDEX if t == image_token_id else t for i, t in enumerate(ids)
           if t != image_token_id or i == 0 or ids[i - 1] != image_token_id]
    return torch.tensor([out])


def _assert_same_logits(hf_model, processor, ours, ours_image_processor, messages=MESSAGES) -> None:
    """Logits of llava-hf on its processor's inputs == ours on the same ids and pixels (our vocabulary)."""
    image = _image()
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    pixels = process_images([image], ours_image_processor, ours.config)
    torch.testing.assert_close(inputs.pixel_values, pixels, atol=0, rtol=0)  # same preprocessing
    image_id = hf_model.config.image_token_id
    assert int((inputs.input_ids == image_id).sum()) == hf_model.config.image_seq_length
    with torch.no_grad():
        hf = hf_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=pixels).logits
        mine = ours(input_ids=_ours_ids(inputs.input_ids, image_id), images=pixels).logits
    assert hf.shape[:2] == mine.shape[:2]
    torch.testing.assert_close(hf[..., : mine.shape[-1]], mine, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_to_hf_same_logits_and_round_trip(variant, request, tiny_clip, tmp_path):
    family, flags, (layer, strategy) = VARIANTS[variant]
    llm = request.getfixturevalue(f"tiny_{family}")
    src = _save_ours(tmp_path / "ours", llm, tiny_clip, AutoTokenizer.from_pretrained(llm), **flags)
    result = convert_to_hf(src, str(tmp_path / "hf"))
    assert any("<image>" in n for n in result.notes)
    hf_model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert isinstance(processor, LlavaProcessor)
    tokenizer, ours, image_processor, _ = load_pretrained_model(src, None, device="cpu")
    cfg = hf_model.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (layer, strategy)
    assert cfg.image_token_id == len(tokenizer) == processor.tokenizer.convert_tokens_to_ids("<image>")
    for hf_emb, emb in ((hf_model.get_input_embeddings(), ours.get_input_embeddings()),
                        (hf_model.get_output_embeddings(), ours.get_output_embeddings())):
        assert torch.equal(hf_emb.weight[:-1], emb.weight)
        torch.testing.assert_close(hf_emb.weight[-1], emb.weight.mean(dim=0))  # the <image> row: the mean row
    own_template = bool(tokenizer.chat_template)
    assert processor.chat_template == (tokenizer.chat_template if own_template else vicuna_chat_template())
    _assert_same_logits(hf_model, processor, ours, image_processor, STRING_MESSAGES if own_template else MESSAGES)

    convert_from_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    back_tokenizer, back, _, _ = load_pretrained_model(str(tmp_path / "back"), None, device="cpu")
    before, after = ours.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key
    c1, c2 = ours.config.to_dict(), back.config.to_dict()
    assert {k for k in c1.keys() | c2.keys() if c1.get(k) != c2.get(k)} <= {"_name_or_path", "mm_vision_tower"}
    assert back.config.mm_vision_tower == str((tmp_path / "back" / "vision_tower").resolve())
    assert len(back_tokenizer) == len(tokenizer) and back_tokenizer.chat_template == tokenizer.chat_template
    assert [back_tokenizer(t).input_ids for t in TEXTS] == [tokenizer(t).input_ids for t in TEXTS]


def test_chat_template_is_vicuna_v1(llama_tokenizer):
    tok = copy.deepcopy(llama_tokenizer)
    tok.chat_template = vicuna_chat_template()
    conv = get_conv_template("vicuna_v1")
    for role, text in ((0, "<image>\nWhat is red?"), (1, "A circle."), (0, "And blue?"), (1, None)):
        conv.append_message(conv.roles[role], text)
    chat = [*MESSAGES, {"role": "assistant", "content": "A circle."}, {"role": "user", "content": "And blue?"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == conv.get_prompt()
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(own_system, tokenize=False, add_generation_prompt=True) == \
        "Be brief. USER: Hi ASSISTANT:"


@pytest.mark.parametrize("name", REFUSED)
def test_inexpressible_addons_are_refused(name, tiny_llama, tiny_clip):
    flags = dict(REFUSED[name])
    model = build_tiny_llava(tiny_llama, tiny_clip, projector_type=flags.pop("projector_type", "mlp2x_gelu"),
                             **flags)
    with pytest.raises(HfInteropError, match=re.escape(name)):
        vision_spec(model.config)


def test_cli_refusal_is_one_line_and_exit_2(tiny_llama, tiny_clip, llama_tokenizer, tmp_path, capsys):
    src = _save_ours(tmp_path / "ours", tiny_llama, tiny_clip, llama_tokenizer, normalize_projector=True)
    with pytest.raises(SystemExit) as exc:
        _load_script("convert_to_hf").main(["--model-path", src, "--output", str(tmp_path / "hf")])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("convert_to_hf: error:")]
    assert len(errors) == 1 and "normalize_projector" in errors[0]
    assert not (tmp_path / "hf").exists()


def test_cosine_regularizer_is_dropped(tiny_llama, tiny_clip):
    model = build_tiny_llava(tiny_llama, tiny_clip, mm_cosine_loss="self_distill")
    spec = vision_spec(model.config)
    assert spec.dropped_modules == ("model.mm_projector_cos.",) and "training-only" in spec.notes[0]
    state = model.state_dict()
    cos = [k for k in state if k.startswith("model.mm_projector_cos.")]
    mapped = to_hf_state_dict(state, spec, add_image_row=False)
    assert cos and len(mapped) == len(state) - len(cos)
    assert not any("mm_projector_cos" in k for k in mapped)


def _release_key(key: str) -> str:
    """A key as transformers 5 saves it -> as the llava-hf hub releases have it (the CLIP tower under
    ``vision_model.``); transformers maps both layouts when loading."""
    assert key.startswith(("language_model.model.", "language_model.lm_head.", "multi_modal_projector.",
                           "vision_tower.")), key
    return "vision_tower.vision_model." + key.removeprefix("vision_tower.") if key.startswith("vision_tower.") else key


def _release_like_folder(path: Path, tiny_llama: str, tiny_clip: str) -> LlavaForConditionalGeneration:
    """A random LlavaForConditionalGeneration laid out like llava-1.5-hf: <image> then <pad>, vocabulary padded
    to a multiple of 8, old weight names, a CLIP image processor that does not pad."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    text = LlamaConfig.from_pretrained(tiny_llama)
    text.vocab_size = 648
    cfg = LlavaConfig(vision_config=CLIPVisionConfig.from_pretrained(tiny_clip), text_config=text,
                      image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=16)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    state = load_file(path / "model.safetensors")
    save_file({_release_key(k): v for k, v in state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    LlavaProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(tiny_clip), tokenizer=tokenizer,
                   patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=vicuna_chat_template()).save_pretrained(path)
    return model


def test_from_hf_release_layout(tiny_llama, tiny_clip, tmp_path):
    hf_model = _release_like_folder(tmp_path / "hf", tiny_llama, tiny_clip)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in hf_model.state_dict().items())
    result = convert_from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"))
    assert any("kept the vocabulary of 648 rows" in n for n in result.notes)
    tokenizer, ours, image_processor, _ = load_pretrained_model(str(tmp_path / "ours"), None, device="cpu")
    assert ours.config.image_aspect_ratio == "square" and ours.get_input_embeddings().weight.shape[0] == 648
    assert len(tokenizer) == 642
    _assert_same_logits(hf_model, AutoProcessor.from_pretrained(tmp_path / "hf"), ours, image_processor)


@pytest.mark.parametrize("change, name", [(dict(projector_hidden_act="gelu_pytorch_tanh"), "gelu_pytorch_tanh"),
                                          (dict(vision_config={"model_type": "siglip_vision_model"}), "siglip")])
def test_from_hf_refuses_what_ours_cannot_express(change, name):
    cfg = LlavaConfig(text_config=LlamaConfig(num_hidden_layers=1), **change)
    with pytest.raises(HfInteropError, match=name):
        check_hf_config(cfg)
