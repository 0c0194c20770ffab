"""Phase-1 model and loss: MLP adapters over frozen encoders into a shared space, trained with a
symmetric InfoNCE (CLIP) loss at every Matryoshka prefix dimension.

Loss (see docs/contrastive.md): with unique images u, captions c, owner(c) the image of caption c,
v_u = normalize(V_u[:m]), t_c = normalize(T_c[:m]) and s = exp(min(log_s, ln max_scale)),
logits L_uc = s * <v_u, t_c>;
t2i: mean over c of -log softmax_u(L_{.c})[owner(c)];
i2t: mean over c of -log exp(L_{o(c)c}) / (exp(L_{o(c)c}) + sum_{c': o(c') != o(c)} exp(L_{o(c)c'})), o = owner;
loss_m = (i2t + t2i) / 2 and the total is sum_m w_m * loss_m.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llava.contrastive.config import AlignmentConfig, get_device, set_seed

__all__ = ["AlignmentConfig", "MLPAdapter", "VisionTextAligner", "clip_loss", "get_device", "matryoshka_clip_loss",
           "set_seed"]  # the seed's `from core import AlignmentConfig, VisionTextAligner, get_device, set_seed`


class MLPAdapter(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear: frozen-encoder features into the shared space."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or max(d_in, d_out)
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in) -> (..., d_out)``."""
        return self.net(x)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image_index: torch.Tensor,
              logit_scale: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE with several captions per image and no same-image false negatives.

    ``image_emb`` (U, d) holds each image once, ``text_emb`` (C, d) every caption, and
    ``caption_image_index`` (C,) the row of each caption's image. Embeddings are L2-normalised here;
    ``logit_scale`` is the (already clamped) multiplier s. Returns the loss and its two directions.
    """
    if image_emb.shape[0] == 0 or text_emb.shape[0] == 0:
        raise ValueError("clip_loss needs at least one image and one caption")
    v = F.normalize(image_emb, dim=-1)
    t = F.normalize(text_emb, dim=-1)
    logits = logit_scale * v @ t.T  # (U, C)
    owner = caption_image_index.to(logits.device).long()
    # text -> image: every image other than the owner is a true negative (images are unique).
    t2i = F.cross_entropy(logits.T, owner)
    # image -> text: one term per (image, caption) positive; the image's other captions leave the denominator.
    rows = logits[owner]  # (C, C): row c = logits of owner(c) against every caption
    same = owner[:, None] == owner[None, :]
    eye = torch.eye(len(owner), dtype=torch.bool, device=logits.device)
    rows = rows.masked_fill(same & ~eye, float("-inf"))
    i2t = -(rows.diagonal() - torch.logsumexp(rows, dim=1)).mean()
    return (i2t + t2i) / 2, {"i2t": i2t.detach(), "t2i": t2i.detach()}


def matryoshka_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image_index: torch.Tensor,
                         logit_scale: torch.Tensor, dims: Sequence[int], weights: Sequence[float]
                         ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``sum_m w_m * clip_loss(prefix m, re-normalised)``; also returns each dim's (unweighted) loss."""
    total = image_emb.new_zeros(())
    per_dim: dict[int, torch.Tensor] = {}
    for m, w in zip(dims, weights):
        loss_m, _ = clip_loss(image_emb[:, :m], text_emb[:, :m], caption_image_index, logit_scale)
        per_dim[int(m)] = loss_m.detach()
        total = total + float(w) * loss_m
    return total, per_dim


class VisionTextAligner(nn.Module):
    """Frozen vision + text encoders, trainable adapters and a learnable temperature.

    ``forward(batch)`` takes the collated batch of :func:`llava.contrastive.data.collate_image_text`
    (raw ``images``/``captions`` or cached ``image_features``/``text_features``) and returns the loss dict.
    """

    def __init__(self, cfg: AlignmentConfig, load_encoders: bool = True, vision_dim: int | None = None,
                 text_dim: int | None = None) -> None:
        super().__init__()
        from llava.contrastive.encoders import FrozenTextEncoder, FrozenVisionEncoder

        self.cfg = cfg
        self.vision_encoder: FrozenVisionEncoder | None = None
        self.text_encoder: FrozenTextEncoder | None = None
        if load_encoders:
            self.vision_encoder = FrozenVisionEncoder(cfg.vision_model_name, cfg.vision_pooling, cfg.trust_remote_code)
            self.text_encoder = FrozenTextEncoder(cfg.text_model_name, cfg.text_max_length, cfg.trust_remote_code)
            vision_dim, text_dim = self.vision_encoder.dim, self.text_encoder.dim
        if vision_dim is None or text_dim is None:
            raise ValueError("VisionTextAligner(load_encoders=False) needs vision_dim and text_dim")
        self.vision_dim, self.text_dim = int(vision_dim), int(text_dim)
        self.vision_adapter = MLPAdapter(self.vision_dim, cfg.d_align, cfg.adapter_hidden, cfg.adapter_dropout)
        self.text_adapter = MLPAdapter(self.text_dim, cfg.d_align, cfg.adapter_hidden, cfg.adapter_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)),
                                        requires_grad=cfg.learnable_temperature)
        self.to(cfg.device)

    # ---- temperature -------------------------------------------------------------------------
    @property
    def max_log_scale(self) -> float:
        """ln(max_logit_scale): CLIP clamps the learnable log-scale at ln 100."""
        return math.log(self.cfg.max_logit_scale)

    def scale(self) -> torch.Tensor:
        """The multiplier s = exp(log_s) with log_s clamped to ln(max_logit_scale)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp the parameter itself in place (called after every optimizer step, as CLIP does)."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)

    # ---- features ----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Adapters and (if learnable) the temperature; the encoders are never included."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(("vision_encoder.",
                                                                                                 "text_encoder."))]

    def raw_image_features(self, images: Sequence[Any]) -> torch.Tensor:
        """Frozen vision features for PIL images (no grad)."""
        if self.vision_encoder is None:
            raise RuntimeError("this aligner was built without encoders; pass cached image_features")
        return self.vision_encoder(images)

    def raw_text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen text features for strings (no grad)."""
        if self.text_encoder is None:
            raise RuntimeError("this aligner was built without encoders; pass cached text_features")
        return self.text_encoder(texts, batch_size=self.cfg.encode_batch_size)

    def _device(self) -> torch.device:
        return self.logit_scale.device

    def embed_images(self, images: Sequence[Any] | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned (unnormalised) image embeddings ``(N, d_align)`` from images or cached features."""
        feats = features if features is not None else self.raw_image_features(images or [])
        return self.vision_adapter(feats.to(self._device()).float())

    def embed_texts(self, texts: Sequence[str] | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned (unnormalised) text embeddings ``(N, d_align)`` from strings or cached features."""
        feats = features if features is not None else self.raw_text_features(texts or [])
        return self.text_adapter(feats.to(self._device()).float())

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Loss dict: ``loss`` (weighted Matryoshka sum), ``per_dim`` {m: loss_m}, ``scale``."""
        img = self.embed_images(batch.get("images"), batch.get("image_features"))
        txt = self.embed_texts(batch.get("captions"), batch.get("text_features"))
        loss, per_dim = matryoshka_clip_loss(img, txt, batch["caption_image_index"], self.scale(),
                                             self.cfg.matryoshka_dims, self.cfg.matryoshka_weights)
        return {"loss": loss, "per_dim": per_dim, "scale": self.scale().detach()}

    # ---- persistence -------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``alignment_config.json`` and ``aligner.pt`` (adapters, temperature, feature dims)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.cfg.save(out / "alignment_config.json")
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("vision_encoder.", "text_encoder."))}
        torch.save({"state_dict": state, "vision_dim": self.vision_dim, "text_dim": self.text_dim}, out / "aligner.pt")

    @classmethod
    def load(cls, out_dir: str | os.PathLike, load_encoders: bool = True, device: str | None = None,
             trust_remote_code: bool = False) -> VisionTextAligner:
        """Rebuild an aligner saved by :meth:`save` (encoders re-loaded from the names in the config).

        ``trust_remote_code``: the user's flag; the saved config cannot turn it on
        (:func:`llava.contrastive.config.trust_from_flag`).
        """
        out = Path(out_dir)
        if not (out / "aligner.pt").is_file():
            raise FileNotFoundError(f"{out / 'aligner.pt'} not found; pass the --output_dir of a phase-1 run")
        cfg = AlignmentConfig.load(out / "alignment_config.json", trust_remote_code=trust_remote_code)
        if device is not None:
            cfg.device = device
        blob = torch.load(out / "aligner.pt", map_location="cpu", weights_only=True)
        model = cls(cfg, load_encoders=load_encoders, vision_dim=blob["vision_dim"], text_dim=blob["text_dim"])
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
        missing = [k for k in missing if not k.startswith(("vision_encoder.", "text_encoder."))]
        if missing or unexpected:
            raise RuntimeError(f"{out / 'aligner.pt'} does not match the config: missing {missing}, "
                               f"unexpected {unexpected}")
        return model
