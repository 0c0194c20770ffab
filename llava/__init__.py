"""llava-beyond: LLaVA-1.5 training and inference on transformers 5, with opt-in projector ablations."""

__version__ = "0.1.0"
