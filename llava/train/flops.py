"""Model FLOPs of a LLaVA training step per component (vision tower, projector, LLM), forward and backward.

Every matmul weight (``in x out`` of a Linear, ``out x in x kernel`` of a convolution) costs 2 FLOPs per
token it is applied to, in each of three products:

* forward ``y = x W``: always;
* backward ``dL/dx = dL/dy W^T``: only when the weight's *input* needs a gradient, i.e. something
  before it (in this component or upstream) trains;
* backward ``dL/dW = x^T dL/dy``: only when the weight trains and the gradient reaches it.

Attention (``Q K^T`` and ``A V``) costs ``4 width s^2`` per layer and sequence of ``s`` tokens
forward and twice that backward, in the layers the gradient goes through. Norms, biases, activations,
softmax and embedding lookups are not matmuls and are not counted; neither is recompute
(gradient checkpointing, flash-attention's backward): these are model FLOPs (MFU), not hardware FLOPs.

Per component (``images`` images, ``P`` patches and ``S = P + 1`` tower positions each, ``T``
projector tokens each, ``t`` real LLM tokens in samples of lengths ``s``):

* vision tower: forward ``2 W_layers S + 2 W_patch P`` plus attention, per image. Backward only
  when the tower trains (LLaVA freezes it), then through the layers up to the selected hidden state
  (``mm_vision_select_layer``; the deepest ``--mm_multilayer_select`` index), not beyond;
* projector: forward ``2 W T``. Backward: weight gradients of its trainable Linears; input gradients
  of every Linear after the first trainable one (``mlp2x_gelu`` with a frozen tower: the second
  Linear's only, as the first one's input is the frozen tower's output), of all of them when the
  tower trains;
* LLM (``lm_head`` included, LoRA's A and B included: they run too): forward ``2 W t`` plus
  attention; backward ``2 W t`` input gradients (every layer: gradients flow to the image tokens
  whenever the projector trains) plus ``2 W_trainable t`` and attention backward in every layer.
  When nothing before the LLM trains (frozen projector and embeddings, e.g. LoRA on a frozen
  projector), the first layer's q/k/v projections (and their LoRA A) need no input gradient.

These are the FLOPs the step *needs*. ``enable_input_require_grads`` (called for gradient
checkpointing) also makes the frozen tower's activations require gradients, so autograd then runs
work that is not counted here (the frozen tower's and the first projector Linear's input gradients).
Exact (checked against ``torch.utils.flop_counter.FlopCounterMode`` with eager attention, tests/test_flops.py)
for frozen or fully trainable towers, trainable or frozen projectors, full, frozen or LoRA LLMs; a block
whose attention does not train while the block's input needs no gradient is counted as if it did.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

ENTRY_MATMUL = re.compile(r"self_attn\.[qkv]_proj(\.base_layer|\.lora_A\.[^.]+)?$")
"""Matmuls of a block that read the block's input (q/k/v of Llama, Mistral, Qwen2 and CLIP layers, LoRA's A)."""
COMPONENTS = ("vision", "projector", "llm")


def matmul_weights(module: nn.Module) -> int:
    """Multiply-adds per token of a Linear or convolution (0 for anything else); full sizes under ZeRO-3."""
    if isinstance(module, nn.Linear):
        return int(module.in_features) * int(module.out_features)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return int(module.out_channels) * int(module.in_channels // module.groups) * math.prod(module.kernel_size)
    return 0


def _matmuls(root: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in root.named_modules() if matmul_weights(m)]


def _trains(module: nn.Module) -> bool:
    return bool(module.weight.requires_grad)


@dataclass(frozen=True)
class Dense:
    """A component's matmul weights; each costs 2 FLOPs per token in each product it takes part in."""

    weights: int = 0
    """Every weight that runs forward."""
    input_grads: int = 0
    """Weights whose input needs a gradient (backward ``dL/dx``)."""
    weight_grads: int = 0
    """Weights that train and that the gradient reaches (backward ``dL/dW``)."""

    def flops(self, tokens: float) -> tuple[float, float]:
        """(forward, backward) FLOPs over ``tokens`` tokens."""
        return 2.0 * self.weights * tokens, 2.0 * (self.input_grads + self.weight_grads) * tokens

    def __add__(self, other: Dense) -> Dense:
        return Dense(self.weights + other.weights, self.input_grads + other.input_grads,
                     self.weight_grads + other.weight_grads)


def attention_flops(layers: int, width: int, sum_sq_lengths: float, grad_layers: int) -> tuple[float, float]:
    """(forward, backward) of ``Q K^T`` and ``A V``: ``4 width s^2`` per layer forward, twice in ``grad_layers``."""
    per_layer = 4.0 * width * sum_sq_lengths
    return per_layer * layers, 2.0 * per_layer * grad_layers


def _plus(*parts: tuple[float, float]) -> tuple[float, float]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a model (:func:`model_shape`)."""

    llm: Dense
    layers: int
    attn_width: int
    """Attention heads x head dim (query side; grouped K/V are repeated to it)."""
    llm_attn_grad_layers: int | None = None
    """LLM layers whose attention runs backward (None: all)."""
    tokens_per_image: int = 1
    """LLM positions per ``<image>`` placeholder (1 without a vision tower)."""
    max_length: int | None = None
    vision: Dense = field(default_factory=Dense)
    """The tower's Linears (every tower position)."""
    vision_patch: Dense = field(default_factory=Dense)
    """The tower's patch embedding convolution (every patch)."""
    vision_layers: int = 0
    vision_width: int = 0
    vision_seq: int = 0
    """Positions per image inside the tower (patches + class token)."""
    vision_patches: int = 0
    vision_attn_grad_layers: int = 0
    projector: Dense = field(default_factory=Dense)
    """The projector and the add-on modules that travel with it."""
    projector_tokens: int = 0
    """Tower tokens per image that go through the projector."""

    @property
    def has_tower(self) -> bool:
        return self.vision_seq > 0

    def component_flops(self, real_tokens: float, sum_sq_lengths: float,
                        images: float) -> dict[str, tuple[float, float]]:
        """(forward, backward) FLOPs of the ``vision`` tower, the ``projector`` and the ``llm`` (:data:`COMPONENTS`).

        ``real_tokens`` LLM tokens in samples whose squared lengths add up to ``sum_sq_lengths``;
        ``images`` images through the tower (a text-only batch's blank image included).
        """
        grad_layers = self.layers if self.llm_attn_grad_layers is None else self.llm_attn_grad_layers
        out = {"vision": (0.0, 0.0), "projector": (0.0, 0.0),
               "llm": _plus(self.llm.flops(real_tokens),
                            attention_flops(self.layers, self.attn_width, sum_sq_lengths, grad_layers))}
        if self.has_tower:
            out["vision"] = _plus(self.vision.flops(images * self.vision_seq),
                                  self.vision_patch.flops(images * self.vision_patches),
                                  attention_flops(self.vision_layers, self.vision_width, images * self.vision_seq ** 2,
                                                  self.vision_attn_grad_layers))
            out["projector"] = self.projector.flops(images * self.projector_tokens)
        return out

    def llm_flops(self, real_tokens: float, sum_sq_lengths: float) -> float:
        """LLM training FLOPs (forward + backward)."""
        return sum(self.component_flops(real_tokens, sum_sq_lengths, 0.0)["llm"])

    def vision_flops(self, images: float) -> float:
        """Tower + projector training FLOPs (forward + backward) for ``images`` images."""
        parts = self.component_flops(0.0, 0.0, images)
        return sum(parts["vision"]) + sum(parts["projector"])


def stack_backward(blocks: Sequence[nn.Module], upstream: bool) -> tuple[Dense, int, bool]:
    """Backward through ``blocks`` run in order: (their Dense, blocks with attention backward, gradient after).

    ``upstream``: the first block's input needs a gradient. A block is on the gradient path once
    ``upstream`` or anything in it trains; its entry matmuls (:data:`ENTRY_MATMUL`) need input
    gradients only when ``upstream``.
    """
    dense, attn = Dense(), 0
    for block in blocks:
        mats = _matmuls(block)
        dense += Dense(weights=sum(matmul_weights(m) for _, m in mats))
        if not upstream and not any(p.requires_grad for p in block.parameters()):
            continue
        attn += 1
        dense += Dense(input_grads=sum(matmul_weights(m) for n, m in mats if upstream or not ENTRY_MATMUL.search(n)),
                       weight_grads=sum(matmul_weights(m) for _, m in mats if _trains(m)))
        upstream = True
    return dense, attn, upstream


def chain_backward(mats: Iterable[nn.Module], upstream: bool) -> tuple[Dense, bool]:
    """Backward through matmuls applied one after another: (their Dense, gradient after)."""
    dense = Dense()
    for m in mats:
        n = matmul_weights(m)
        dense += Dense(n, n if upstream else 0, n if _trains(m) else 0)
        upstream = upstream or _trains(m)
    return dense, upstream


def _tower_grad_depth(config: Any, tower: Any) -> int:
    """Tower layers whose output the selected hidden state(s) depend on."""
    from llava.model.addons.registry import AddonRegistry

    layers = int(tower.config.num_hidden_layers)
    picks = AddonRegistry().pipeline(config).tower_layers(int(tower.select_layer))
    return max(int(i) % (layers + 1) for i in picks)


def _tower_shape(config: Any, tower: Any) -> tuple[dict[str, Any], bool]:
    """The vision fields of :class:`ModelShape` for a CLIP tower, and whether its output needs a gradient."""
    inner = getattr(tower.vision_tower, "vision_model", tower.vision_tower)
    blocks = list(inner.encoder.layers)
    depth = _tower_grad_depth(config, tower)
    embed_trains = any(p.requires_grad for n, p in tower.named_parameters()
                       if ".embeddings." in f".{n}" or "pre_layrnorm" in n)
    on_path, attn, out_grad = stack_backward(blocks[:depth], embed_trains)
    rest, _, _ = stack_backward(blocks[depth:], False)  # run forward; no gradient comes back to them
    patch = Dense()
    for _, conv in _matmuls(inner.embeddings):
        n = matmul_weights(conv)
        patch += Dense(n, 0, n if _trains(conv) else 0)
    fields = dict(vision=on_path + Dense(weights=rest.weights), vision_patch=patch, vision_layers=len(blocks),
                  vision_width=int(tower.config.hidden_size), vision_patches=int(tower.num_patches),
                  vision_seq=int(tower.num_patches) + 1,  # CLIP runs a class token with the patches
                  vision_attn_grad_layers=attn, projector_tokens=int(getattr(tower, "num_tokens", tower.num_patches)))
    return fields, out_grad


def _llm_geometry(config: Any) -> tuple[int, int]:
    """(layers, attention width = heads x head dim) of the LLM's config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return int(text.num_hidden_layers), int(heads * head_dim)


def model_shape(model: Any) -> ModelShape:
    """The :class:`ModelShape` of a (possibly PEFT-wrapped) LLaVA model or plain causal LM, as it trains now."""
    get_model = getattr(model, "get_model", None)
    base = get_model() if get_model is not None else model.get_decoder()
    tower = base.get_vision_tower() if hasattr(base, "get_vision_tower") else None
    skip = {id(m) for m in tower.modules()} if tower is not None else set()
    shape: dict[str, Any] = {}
    upstream = False  # the LLM's input embeddings need a gradient
    if tower is not None:
        from llava.model.llava_arch import image_tokens_per_sample

        shape, tower_grad = _tower_shape(model.config, tower)
        if getattr(base, "mm_projector", None) is not None:
            projector_modules = base.projector_modules()
            skip |= {id(m) for p in projector_modules for m in p.modules()}
            shape["projector"], upstream = chain_backward(
                (m for p in projector_modules for _, m in _matmuls(p)), tower_grad)
        shape["tokens_per_image"] = image_tokens_per_sample(model, tower)
    embed = model.get_input_embeddings()
    upstream = upstream or (embed is not None and any(p.requires_grad for p in embed.parameters()))
    blocks = list(getattr(base, "layers", []))
    llm, attn, after = stack_backward(blocks, upstream)
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    rest = [m for _, m in _matmuls(model) if id(m) not in skip and id(m) not in in_blocks]  # lm_head: after them
    llm += Dense(sum(map(matmul_weights, rest)), sum(map(matmul_weights, rest)) if after else 0,
                 sum(matmul_weights(m) for m in rest if _trains(m)))
    layers, width = _llm_geometry(model.config)
    return ModelShape(llm=llm, layers=layers, attn_width=width, llm_attn_grad_layers=attn if blocks else None,
                      max_length=getattr(model.config, "tokenizer_model_max_length", None), **shape)


def component_mfu(shape: ModelShape, counts: Sequence[float], seconds: float, peak_flops: float,
                  devices: int = 1) -> dict[str, float]:
    """MFU of each of :data:`COMPONENTS` for summed ``COUNT_FIELDS`` of :mod:`llava.train.throughput`."""
    real, _, _, _, sum_sq, images = (float(c) for c in counts)
    budget = seconds * peak_flops * max(1, devices)
    return {k: sum(v) / budget for k, v in shape.component_flops(real, sum_sq, images).items()}
