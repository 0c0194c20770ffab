"""One thin file per LLM family; the shared machinery lives in ``llava_causal_lm``."""
