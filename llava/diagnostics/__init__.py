"""Diagnostics that look inside a trained checkpoint: :mod:`llava.diagnostics.token_norms` (L2 norms of vision
tokens along the vision pipeline versus the LLM's text-token embeddings)."""
