"""Cross-model embedding alignment: map one LLaVA's projected image tokens onto another's.

Two steps, decoupled (seed 000):

1. :func:`llava.embedding_alignment.generate.generate_embeddings` runs the same preprocessed pixels
   through two LLaVA models (this project's checkpoints or transformers' native llava-hf ones) and
   writes their post-projector embeddings to ``X.npy`` / ``y.npy`` memmaps plus ``manifest.json``
   (incremental, resumable; unreadable images reported and skipped).
2. :func:`llava.embedding_alignment.train.train_mlp` streams ``(X, y)`` pairs from those files and
   trains ``Linear -> LayerNorm -> GELU -> Linear`` with loss ``1 - cos``, reporting cosine, MSE and
   alignment variance (variance across image categories of the per-category mean cosine).

This package is separate from the contrastive-alignment code on purpose; import submodules directly.
"""
