"""Frozen-encoder vision-text alignment (Matryoshka + CLIP loss) and a prefix-token LLM captioning phase.

Phase 1: :class:`VisionTextAligner` (frozen CLIP-like vision tower via transformers, frozen
sentence-transformers text model, trainable MLP adapters, learnable temperature) trained by
:func:`train_alignment`; evaluated by :func:`evaluate_retrieval`. Phase 2: :class:`MultimodalLLM`
(aligner frozen, projector to k prefix tokens, optional LoRA) trained by :func:`train_captioning`.
See docs/contrastive.md for the loss formula and the CLIs.
"""

from llava.contrastive.config import AlignmentConfig, LLMConfig, get_device, set_seed
from llava.contrastive.core import MLPAdapter, VisionTextAligner, clip_loss, matryoshka_clip_loss
from llava.contrastive.data import (
    ImageTextDataset,
    ImageTextRecord,
    cache_features,
    collate_image_text,
    create_dataloader,
    load_records,
    save_records,
    synthetic_shapes,
)
from llava.contrastive.llm_integration import MultimodalLLM, evaluate_captions, train_captioning
from llava.contrastive.metrics import caption_metrics, cider_d
from llava.contrastive.train import (
    evaluate_retrieval,
    format_retrieval_table,
    plot_recall_vs_dim,
    recall_at_k,
    train_alignment,
)

__all__ = [
    "AlignmentConfig", "LLMConfig", "get_device", "set_seed", "MLPAdapter", "VisionTextAligner", "clip_loss",
    "matryoshka_clip_loss", "ImageTextDataset", "ImageTextRecord", "cache_features", "collate_image_text",
    "create_dataloader", "load_records", "save_records", "synthetic_shapes", "MultimodalLLM", "evaluate_captions",
    "train_captioning", "caption_metrics", "cider_d", "evaluate_retrieval", "format_retrieval_table",
    "plot_recall_vs_dim", "recall_at_k", "train_alignment",
]
