"""Load a saved image processor the same way on every supported transformers release (5.17 and later).

Always the PIL backend, chosen by name (``backend="pil"``): the backend this project preprocesses with
everywhere else (``CLIPImageProcessorPil``, ``LlavaImageProcessorPil``), so the pixels do not depend on
whether torchvision is installed. ``AutoImageProcessor`` is imported from the module that defines it:
transformers 5.17's top-level lazy ``transformers.AutoImageProcessor`` is a placeholder that demands
torchvision (its import structure files the whole module under torchvision), although the class itself
runs the PIL backend without it; later releases export the same class at the top level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import ImageProcessingMixin

BACKEND = "pil"


def load_image_processor(name_or_path: str, trust_remote_code: bool = False) -> ImageProcessingMixin:
    """The image processor saved in ``name_or_path`` (a dir or cached hub name), on the PIL backend."""
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(name_or_path, backend=BACKEND, trust_remote_code=trust_remote_code)
