"""Snapshots of tiny LLaVA models for a spread of add-on flag combinations (the add-on regression).

``python tests/addon_snapshot.py`` (re)writes ``tests/fixtures/addon_regression/``:

* ``snapshot.json``: per case, the state-dict keys and shapes, the ``config.json`` fields (paths
  left out), the ``mm_projector.bin`` keys and shapes, and the losses;
* ``tensors.safetensors``: per case, a fixed random projection of all logits, the full logits of
  the last position and the gradient of every projector-side parameter;
* ``checkpoint/``: a projector-only checkpoint (all six base flags + self-distillation) trained
  two steps, with its expected logits in ``tensors.safetensors``.

The fixture was written by the code before the add-on registry redesign; the test
(``tests/test_addon_regression.py``) checks that today's code reproduces it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.checkpoints import save_mm_projector
from llava.testing.tiny_llava import build_tiny_llava

FIXTURE = Path(__file__).parent / "fixtures" / "addon_regression"
SIX = dict(normalize_projector=True, use_multilayer_features=True, mm_multilayer_select="1,2,3",
           compression_after_projection=True, final_spatial_size=4, twoD_vision_embedding=True,
           interleave=True, interleave_sparsity=2, add_spatial_coordinates=True)
CASES: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "normalize": dict(normalize_projector=True),
    "multilayer": dict(use_multilayer_features=True, mm_multilayer_select="1,2,3"),
    "compression": dict(compression_after_projection=True, final_spatial_size=4),
    "compression_max": dict(compression_after_projection=True, final_spatial_size=4, mm_compression_mode="max"),
    "rope2d": dict(twoD_vision_embedding=True),
    "interleave": dict(interleave=True, interleave_sparsity=4),
    "coordinates": dict(add_spatial_coordinates=True),
    "multinorm": dict(normalize_projector=True, use_multilayer_features=True, mm_multilayer_select="1,2,3,4"),
    "all_six": SIX,
    "cos_constrain_embed": dict(mm_cosine_loss="constrain", mm_cosine_lambda=0.5),
    "cos_constrain_gram": dict(mm_cosine_loss="constrain", mm_cosine_constrain_mode="gram"),
    "cos_self_distill": dict(mm_cosine_loss="self_distill"),
    "cos_self_distill_stop_grad": dict(mm_cosine_loss="self_distill", mm_cosine_stop_grad=True),
    "all_six_self_distill": dict(SIX, mm_cosine_loss="self_distill", mm_cosine_lambda=0.3),
}
CHECKPOINT_CASE = "all_six_self_distill"
IDS = torch.tensor([[1, IMAGE_TOKEN_INDEX, 20, 21, 22, 23], [1, 5, IMAGE_TOKEN_INDEX, 7, 8, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
LABELS = IDS.masked_fill((IDS == IMAGE_TOKEN_INDEX) | (MASK == 0), IGNORE_INDEX)
PATH_KEYS = ("mm_vision_tower", "_name_or_path")


def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=gen)


def logit_projection(vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(vocab, 8, generator=gen) / vocab ** 0.5


def build(llm: str, clip: str, tokenizer: Any, flags: dict[str, Any]) -> torch.nn.Module:
    model = build_tiny_llava(llm, clip, seed=0, **flags)
    model.initialize_vision_tokenizer(SimpleNamespace(), tokenizer)
    return model


def losses(model: torch.nn.Module, out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L_TP, {name: L_i}) of a forward with labels."""
    aux = out.get("aux_losses") if isinstance(out, dict) else None
    if aux is not None:
        return out.loss, dict(aux)
    if "loss_tp" in out:  # the pre-registry model: loss = L_TP + lambda * L_cos
        return out["loss_tp"], {"cos": out["loss_cos"]}
    return out.loss, {}


def total_loss(model: torch.nn.Module, out: Any) -> torch.Tensor:
    """L_TP + sum(lambda_i * L_i) for one micro-batch."""
    if isinstance(out, dict) and out.get("aux_losses") is not None:
        weights = model.get_model().addon_pipeline().aux_weights()
        return out.loss + sum(weights[k] * v for k, v in out["aux_losses"].items())
    return out.loss


def projector_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    keep = {id(p) for m in model.get_model().projector_modules() for p in m.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) in keep}


def snapshot(model: torch.nn.Module, workdir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """JSON-able facts and tensors of one case."""
    model.eval()
    model.zero_grad()
    out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS, images=images())
    tp, aux = losses(model, out)
    total_loss(model, out).backward()
    logits = out.logits.detach()
    tensors = {"proj": logits @ logit_projection(logits.shape[-1]), "last": logits[:, -1]}
    for name, p in projector_params(model).items():
        tensors[f"grad.{name}"] = p.grad.detach().clone()
    save_mm_projector(model, workdir)
    proj = torch.load(workdir / "mm_projector.bin", map_location="cpu", weights_only=True)
    config = {k: v for k, v in json.loads((workdir / "config.json").read_text()).items() if k not in PATH_KEYS}
    facts = {
        "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()},
        "config": config,
        "mm_projector": {k: list(v.shape) for k, v in proj.items()},
        "loss_tp": float(tp.detach()),
        "aux": {k: float(v.detach()) for k, v in aux.items()},
    }
    return facts, tensors


def train_two_steps(model: torch.nn.Module) -> None:
    model.train()
    params = list(projector_params(model).values())
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):
        out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS, images=images())
        total_loss(model, out).backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def write(out_dir: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from llava.testing.tiny_models import build_all

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_all(Path(tmp) / "tiny")
        tok = AutoTokenizer.from_pretrained(paths.llama, use_fast=False)
        facts, tensors = {}, {}
        for name, flags in CASES.items():
            work = Path(tmp) / name
            facts[name], case_tensors = snapshot(build(paths.llama, paths.clip, tok, flags), work)
            tensors.update({f"{name}.{k}": v.contiguous() for k, v in case_tensors.items()})
        model = build(paths.llama, paths.clip, tok, CASES[CHECKPOINT_CASE])
        train_two_steps(model)
        ckpt = out_dir / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_mm_projector(model, ckpt)
        with torch.no_grad():
            tensors["checkpoint.logits"] = model(input_ids=IDS, attention_mask=MASK, images=images()).logits
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "snapshot.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    save_file(tensors, str(out_dir / "tensors.safetensors"))


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE)
