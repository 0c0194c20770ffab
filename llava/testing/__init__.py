"""Helpers that build tiny random models, tokenizers and data for CPU tests and the demo."""
