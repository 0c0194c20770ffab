"""The FLOP formula of llava/train/flops.py against ``torch.utils.flop_counter.FlopCounterMode`` (issue 27).

A tiny LLaVA (eager attention, so attention's backward is the plain 2x of its forward, with no
recompute) trains one step on an unpadded batch; module hooks split the counted FLOPs into the
vision tower, the projector and the LLM, forward and backward (backward runs the LLM first, then the
projector, then the tower: a hook on each one's output marks where its gradient arrives). The
formula must give the same numbers, component by component, for LLaVA's stages (projector only,
full fine-tuning, LoRA), LoRA with a frozen projector (no gradient into the LLM's inputs), a linear
projector, and a trainable tower (gradients only through the layers below the selected one).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.train.flops import COMPONENTS, Dense, ModelShape, model_shape
from llava.train.throughput import COUNT_FIELDS, batch_counts

LORA_TARGETS = r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"


def _batch(model: torch.nn.Module, rows: int = 2, length: int = 20) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (rows, length), generator=gen)
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.masked_fill(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX)
    labels[:, :5] = IGNORE_INDEX
    size = model.get_vision_tower().config.image_size
    return dict(input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                images=torch.randn(rows, 3, size, size, generator=gen))


def measured(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """(forward, backward) FLOPs that FlopCounterMode counts for each of COMPONENTS in one training step."""
    base = net.get_model()
    marks: dict[str, int] = {}
    with FlopCounterMode(display=False) as counter:
        total = counter.get_total_flops

        def hooks(name: str, module: torch.nn.Module) -> list:
            def post(_m: torch.nn.Module, _a: tuple, out: torch.Tensor) -> None:
                marks[name + ">"] = total()
                if out.requires_grad:
                    out.register_hook(lambda g: marks.__setitem__(name + "'", total()))

            return [module.register_forward_pre_hook(lambda _m, _a: marks.__setitem__(name + "<", total())),
                    module.register_forward_hook(post)]

        handles = hooks("vision", base.get_vision_tower()) + hooks("projector", base.mm_projector)
        loss = net(**batch).loss
        forward = total()
        loss.backward()
        end = total()
    for h in handles:
        h.remove()
    fwd = {k: marks[k + ">"] - marks[k + "<"] for k in ("vision", "projector")}
    at_projector, at_tower = marks.get("projector'", end), marks.get("vision'", end)
    return dict(vision=(fwd["vision"], end - at_tower), projector=(fwd["projector"], at_tower - at_projector),
                llm=(forward - fwd["vision"] - fwd["projector"], at_projector - forward))


def _setup(case: str, tiny_llama: str, tiny_clip: str) -> torch.nn.Module:
    from llava.testing.tiny_llava import build_tiny_llava

    model = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear" if case == "linear" else "mlp2x_gelu")
    model.set_attn_implementation("eager")
    model.train()
    base = model.get_model()
    if case in ("full", "tower"):
        model.requires_grad_(True)
        base.get_vision_tower().requires_grad_(case == "tower")
        return model
    model.requires_grad_(False)
    base.mm_projector.requires_grad_(case != "lora_frozen_projector")
    if not case.startswith("lora"):
        return model
    from peft import LoraConfig, get_peft_model

    net = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=LORA_TARGETS))
    base.mm_projector.requires_grad_(case != "lora_frozen_projector")
    return net


@pytest.mark.parametrize("case", ["stage1", "linear", "full", "lora", "lora_frozen_projector", "tower"])
def test_formula_matches_flop_counter(case: str, tiny_llama, tiny_clip) -> None:
    net = _setup(case, tiny_llama, tiny_clip)
    batch = _batch(net)
    shape = model_shape(net)
    counts = dict(zip(COUNT_FIELDS, batch_counts(batch, shape.tokens_per_image, shape.max_length).tolist()))
    assert counts["real_tokens"] == counts["processed_positions"]  # no padding: the counter sees only real work
    got = measured(net, batch)
    want = shape.component_flops(counts["real_tokens"], counts["sum_sq_lengths"], counts["vision_images"])
    assert set(want) == set(COMPONENTS)
    # exact on transformers 5.25; 5.17's Llama rotary embedding adds a small matmul (inv_freq x positions, about
    # 6e-5 of the LLM's forward) that FlopCounterMode counts and the formula, by design, does not
    assert all(want[c] == pytest.approx(got[c], rel=1e-4) for c in COMPONENTS), (case, want, got)
    # the backward that each case does (and does not) have
    assert (got["vision"][1] > 0) == (case == "tower")
    assert (got["projector"][1] > 0) == (case != "lora_frozen_projector")
    assert all(v > 0 for v in (got["llm"][1], got["vision"][0], got["projector"][0], got["llm"][0]))


def test_frozen_tower_mlp_projector_counts_the_second_linears_input_grad(tiny_llama, tiny_clip) -> None:
    """The issue-27 case: ``mlp2x_gelu`` after a frozen tower: both weight grads, the second Linear's input grad."""
    model = _setup("stage1", tiny_llama, tiny_clip)
    shape = model_shape(model)
    width_in, width = model.get_vision_tower().hidden_size, model.config.hidden_size
    first, second = width_in * width, width * width
    assert shape.projector == Dense(weights=first + second, input_grads=second, weight_grads=first + second)
    assert shape.vision.input_grads == shape.vision.weight_grads == shape.vision_attn_grad_layers == 0


def test_by_hand() -> None:
    shape = ModelShape(llm=Dense(100, 100, 10), layers=2, attn_width=8, tokens_per_image=4,
                       vision=Dense(50), vision_patch=Dense(6), vision_layers=1, vision_width=4, vision_seq=5,
                       vision_patches=4, projector=Dense(20, 5, 20), projector_tokens=4)
    parts = shape.component_flops(11, 43, 2)
    # LLM: 2 x 100 x 11 forward + attention 4 x 2 layers x 8 x 43; backward (2 x 100 + 2 x 10) x 11 + twice attention
    assert parts["llm"] == (2200 + 2752, 2420 + 5504)
    # frozen tower, forward only: 2 x 50 x 10 positions + 2 x 6 x 8 patches + 4 x 4 x 2 x 5^2
    assert parts["vision"] == (1000 + 96 + 800, 0)
    # projector: 2 x 20 x 8 tokens forward; backward 2 x (5 + 20) x 8
    assert parts["projector"] == (320, 400)
    assert shape.llm_flops(11, 43) == sum(parts["llm"]) and shape.vision_flops(2) == 1896 + 720
