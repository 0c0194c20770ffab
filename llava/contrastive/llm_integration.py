"""Phase 2: the frozen aligner's image embedding becomes k prefix token embeddings for a causal LLM.

Sequence per sample: ``[prefix_1..prefix_k] [prompt tokens] [caption tokens] [eos]``; the prompt is
the tokenizer's chat template around ``LLMConfig.prompt`` when it has one (else ``prompt + "\\n"``).
Labels are -100 on the prefix, the prompt and padding, so the loss is on caption tokens (and eos) only.
The projector input is the aligned image embedding's first ``aligned_dim`` values, L2-normalised and
multiplied by sqrt(aligned_dim). Trainable: the projector, plus LoRA adapters when ``use_lora``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from llava.contrastive.config import LLMConfig, trust_from_flag
from llava.contrastive.core import VisionTextAligner
from llava.contrastive.data import ImageTextDataset, _open

__all__ = ["LLMConfig", "MultimodalLLM", "evaluate_captions", "train_captioning"]  # the seed's llm_integration names

IGNORE_INDEX = -100


class MultimodalLLM(nn.Module):
    """Frozen :class:`VisionTextAligner` -> trainable prefix projector -> causal LLM (optionally LoRA-tuned)."""

    def __init__(self, aligner: VisionTextAligner, llm_cfg: LLMConfig) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = llm_cfg
        self.aligner = aligner
        aligner.requires_grad_(False)
        aligner.eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(llm_cfg.model_name,
                                                           trust_remote_code=llm_cfg.trust_remote_code)
        except OSError as e:
            raise OSError(f"cannot load tokenizer from {llm_cfg.model_name!r} (--llm): {e}") from e
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, llm_cfg.torch_dtype)
        llm = AutoModelForCausalLM.from_pretrained(llm_cfg.model_name, dtype=dtype,
                                                   trust_remote_code=llm_cfg.trust_remote_code)
        llm.requires_grad_(False)
        if llm_cfg.use_lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=llm_cfg.lora_r, lora_alpha=llm_cfg.lora_alpha, lora_dropout=llm_cfg.lora_dropout,
                              target_modules=list(llm_cfg.lora_target_modules), task_type="CAUSAL_LM")
            llm = get_peft_model(llm, lora)
        self.llm = llm
        hidden = int(llm.get_input_embeddings().weight.shape[1])
        d_in = llm_cfg.aligned_dim or aligner.cfg.d_align
        if d_in > aligner.cfg.d_align:
            raise ValueError(f"aligned_dim={d_in} exceeds the aligner's d_align={aligner.cfg.d_align}")
        self.d_in, self.hidden = int(d_in), hidden
        mid = llm_cfg.projector_hidden or hidden
        self.projector = nn.Sequential(nn.Linear(d_in, mid), nn.GELU(),
                                       nn.Linear(mid, llm_cfg.num_prefix_tokens * hidden))
        self.to(llm_cfg.device)
        self.projector.to(dtype)

    def train(self, mode: bool = True) -> MultimodalLLM:
        """Train mode for projector/LLM; the aligner always stays in eval mode."""
        super().train(mode)
        self.aligner.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the projector lives."""
        return next(self.projector.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Projector parameters plus LoRA parameters (if any); never the aligner's."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("aligner.")]

    # ---- building inputs -------------------------------------------------------------------------
    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Any] | None = None, features: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Frozen aligned embeddings (first ``aligned_dim`` dims, normalised, x sqrt(dim))."""
        z = self.aligner.embed_images(images, features)[:, :self.d_in]
        return F.normalize(z.float(), dim=-1) * math.sqrt(self.d_in)

    def prefix(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, d_in) -> (B, k, hidden)`` prefix token embeddings."""
        w = self.projector[0].weight
        return self.projector(z.to(device=w.device, dtype=w.dtype)).view(z.shape[0], self.cfg.num_prefix_tokens,
                                                                          self.hidden)

    def prompt_ids(self, prompt: str | None = None) -> list[int]:
        """Token ids of the prompt (chat template with a generation prompt when available)."""
        text = self.cfg.prompt if prompt is None else prompt
        tok = self.tokenizer
        if self.cfg.use_chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False)
        else:
            text = text + "\n"
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def build_inputs(self, prefix: torch.Tensor, captions: Sequence[str], prompt: str | None = None
                     ) -> dict[str, torch.Tensor]:
        """Right-padded training inputs: ``inputs_embeds``, ``attention_mask``, ``labels`` (caption tokens only)."""
        p_ids = self.prompt_ids(prompt)
        eos = self.tokenizer.eos_token_id
        rows, labs = [], []
        for cap in captions:
            c_ids = list(self.tokenizer(cap, add_special_tokens=False)["input_ids"])[:self.cfg.max_caption_tokens]
            c_ids = c_ids + ([eos] if eos is not None else [])
            rows.append(p_ids + c_ids)
            labs.append([IGNORE_INDEX] * len(p_ids) + c_ids)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, labs)):
            ids[i, :len(r)] = torch.tensor(r)
            labels[i, :len(lab)] = torch.tensor(lab)
            mask[i, :len(r)] = 1
        dev = prefix.device
        emb = self.llm.get_input_embeddings()(ids.to(dev))
        k = prefix.shape[1]
        return {"inputs_embeds": torch.cat([prefix.to(emb.dtype), emb], dim=1),
                "attention_mask": torch.cat([torch.ones(len(rows), k, dtype=torch.long), mask], dim=1).to(dev),
                "labels": torch.cat([torch.full((len(rows), k), IGNORE_INDEX, dtype=torch.long), labels], 1).to(dev)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Caption loss for a collated batch (each caption paired with its image)."""
        z = self.image_embeddings(batch.get("images"), batch.get("image_features"))
        z = z[batch["caption_image_index"].to(z.device)]
        inputs = self.build_inputs(self.prefix(z), batch["captions"], batch.get("prompt"))
        out = self.llm(**inputs)
        return {"loss": out.loss}

    # ---- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: Sequence[Any] | None = None, prompt: str | None = None, *,
                 image_features: torch.Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int | None = None, max_new_tokens: int | None = None,
                 seed: int | None = None) -> list[str]:
        """Captions for PIL images (or cached vision features): greedy by default, sampled with ``do_sample``."""
        was_training = self.training
        self.eval()
        if images is not None:
            images = [_open(im) for im in images]
        z = self.image_embeddings(images, image_features)
        pre = self.prefix(z)
        ids = torch.tensor(self.prompt_ids(prompt), dtype=torch.long, device=pre.device)
        emb = self.llm.get_input_embeddings()(ids)[None].expand(pre.shape[0], -1, -1)
        embeds = torch.cat([pre.to(emb.dtype), emb], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=pre.device)
        if seed is not None:
            torch.manual_seed(seed)
        kw: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": max_new_tokens or self.cfg.max_new_tokens,
                              "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id}
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p, top_k=top_k if top_k is not None else 0)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **kw)
        self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``llm_config.json``, ``projector.pt``, the aligner (``aligner/``) and LoRA (``lora/``) if used."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "llm_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        torch.save({k: v.cpu() for k, v in self.projector.state_dict().items()}, out / "projector.pt")
        self.aligner.save(out / "aligner")
        if self.cfg.use_lora:
            self.llm.save_pretrained(str(out / "lora"))

    @classmethod
    def load(cls, out_dir: str | os.PathLike, device: str | None = None, trust_remote_code: bool = False
             ) -> MultimodalLLM:
        """Rebuild a model saved by :meth:`save`; ``trust_remote_code`` is the user's flag, never the files'."""
        out = Path(out_dir)
        if not (out / "projector.pt").is_file():
            raise FileNotFoundError(f"{out / 'projector.pt'} not found; pass the --output_dir of a phase-2 run")
        config_file = out / "llm_config.json"
        cfg = LLMConfig.from_dict(trust_from_flag(json.loads(config_file.read_text()), config_file, trust_remote_code))
        if device is not None:
            cfg.device = device
        use_lora, cfg.use_lora = cfg.use_lora, False
        aligner = VisionTextAligner.load(out / "aligner", device=cfg.device, trust_remote_code=trust_remote_code)
        model = cls(aligner, cfg)
        if use_lora:
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, str(out / "lora")).to(cfg.device)
            model.cfg.use_lora = True
        model.projector.load_state_dict(torch.load(out / "projector.pt", map_location="cpu", weights_only=True))
        return model


def train_captioning(model: MultimodalLLM, loader: DataLoader, num_epochs: int = 1, lr: float | None = None,
                     log_every: int = 0) -> dict[str, Any]:
    """Train the projector (and LoRA) on caption loss; returns ``step_loss``, ``epoch_loss``, ``seconds``."""
    cfg = model.cfg
    proj = list(model.projector.parameters())
    ids = {id(p) for p in proj}
    other = [p for p in model.trainable_parameters() if id(p) not in ids]
    groups = [{"params": proj, "lr": cfg.lr if lr is None else lr}]
    if other:
        groups.append({"params": other, "lr": cfg.lora_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    hist: dict[str, Any] = {"step_loss": [], "epoch_loss": []}
    start = time.perf_counter()
    model.train()
    for _ in range(num_epochs):
        losses = []
        for batch in loader:
            loss = model(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if log_every and len(hist["step_loss"]) % log_every == 0:
                print(f"caption step {len(hist['step_loss'])} loss {losses[-1]:.4f}", flush=True)
            hist["step_loss"].append(losses[-1])
        hist["epoch_loss"].append(sum(losses) / max(1, len(losses)))
    hist["seconds"] = time.perf_counter() - start
    return hist


def evaluate_captions(model: MultimodalLLM, dataset: ImageTextDataset, batch_size: int = 16,
                      do_sample: bool = False, seed: int = 0) -> dict[str, Any]:
    """Generate one caption per image of ``dataset`` and score it against all of that image's captions."""
    from llava.contrastive.metrics import caption_metrics

    hyps: list[str] = []
    feats = dataset.features
    for s in range(0, len(dataset.records), batch_size):
        recs = dataset.records[s:s + batch_size]
        if feats is not None:
            hyps += model.generate(image_features=feats["image"][s:s + batch_size], do_sample=do_sample, seed=seed)
        else:
            hyps += model.generate([r.image for r in recs], do_sample=do_sample, seed=seed)
    refs = [r.captions for r in dataset.records]
    result: dict[str, Any] = caption_metrics(hyps, refs)
    result["samples"] = [{"image_id": r.image_id, "generated": h, "references": r.captions}
                         for r, h in zip(dataset.records, hyps)]
    return result
