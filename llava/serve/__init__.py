"""Interactive serving: the CLI chat and the shared prompt/generation helpers."""
