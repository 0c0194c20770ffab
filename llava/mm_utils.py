"""Multimodal helpers shared by training, evaluation and serving.

Image side: :func:`load_image` (local files, RGB), :func:`expand2square` and
:func:`image_to_tensor` / :func:`process_images` (``image_aspect_ratio`` ``pad`` pads to a square
with the processor's mean colour before preprocessing; ``square``/``None`` preprocesses as is).

Text side: :func:`tokenizer_image_token` turns a prompt containing ``<image>`` into ids with
``IMAGE_TOKEN_INDEX`` (-200) at each placeholder, keeping a single BOS at the front;
:class:`KeywordsStoppingCriteria` stops generation when a stop string appears.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageFile
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

VALID_IMAGE_ASPECT_RATIOS = (None, "square", "pad")


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...] | int) -> Image.Image:
    """Pad ``pil_img`` to a square canvas of ``background_color``, centring the original."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def background_color_for(image_processor: Any) -> tuple[int, ...]:
    """The processor's ``image_mean`` as a 0-255 RGB colour (upstream's padding colour)."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


def crop_size_of(image_processor: Any) -> tuple[int, int]:
    """``(height, width)`` of the processor's output (works for dicts and transformers' ``SizeDict``)."""
    crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    if crop is None:
        raise ValueError(f"image processor {type(image_processor).__name__} has neither crop_size nor size")
    return int(crop["height"]), int(crop["width"])


def _check_aspect_ratio(image_aspect_ratio: str | None) -> None:
    if image_aspect_ratio not in VALID_IMAGE_ASPECT_RATIOS:
        raise ValueError(
            f"image_aspect_ratio {image_aspect_ratio!r} is not supported; valid values: 'square', 'pad' "
            "(or None for plain preprocessing). 'anyres' (LLaVA-1.6) is not implemented."
        )


def image_to_tensor(image: Image.Image, image_processor: Any, image_aspect_ratio: str | None) -> torch.Tensor:
    """Preprocess one RGB image into a ``(3, H, W)`` tensor, padding to a square first for ``'pad'``."""
    _check_aspect_ratio(image_aspect_ratio)
    if image_aspect_ratio == "pad":
        image = expand2square(image, background_color_for(image_processor))
    return image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def process_images(images: Sequence[Image.Image], image_processor: Any, model_cfg: Any) -> torch.Tensor:
    """Preprocess PIL images into an ``(N, 3, H, W)`` tensor following ``model_cfg.image_aspect_ratio``."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    _check_aspect_ratio(aspect)
    if len(images) == 0:
        raise ValueError("process_images got an empty list of images")
    return torch.stack([image_to_tensor(image, image_processor, aspect) for image in images], dim=0)


# The pad colour of LLaVA-1.5's CLIP processor (image_mean x 255): transparency is composited onto it when the
# caller has no processor of its own.
CLIP_BACKGROUND = (122, 116, 104)


def load_image(path: str | os.PathLike, background: tuple[int, ...] = CLIP_BACKGROUND,
               max_pixels: int | None = None) -> Image.Image:
    """Open a local image file fully (truncated files raise) and convert it to RGB.

    Transparent pixels (RGBA, LA, PA, and P/L/RGB images with a ``transparency`` entry) are composited onto
    ``background``: pass :func:`background_color_for` of the model's processor so they match the colour
    ``pad`` uses. ``max_pixels`` (width x height) refuses larger images from their header, before decoding,
    with ``PIL.Image.DecompressionBombError``. URLs are refused: download the file first. Raises
    ``FileNotFoundError`` for a missing path and ``OSError`` (PIL's ``UnidentifiedImageError`` or
    "truncated") for unreadable files.
    """
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        raise ValueError(
            f"load_image only reads local files; download {path!r} first and pass the local path"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone enabled PIL's global "load truncated images" switch; verify() still detects truncation
        # for formats with checksums (PNG), so use it rather than silently training on half an image.
        with Image.open(path) as probe:
            probe.verify()
    with Image.open(path) as image:
        check_pixel_count(image.size, max_pixels)
        image.load()
        if has_transparency(image):
            return composite_on(image, background)
        return to_8bit_rgb(image)


def check_pixel_count(size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise ``PIL.Image.DecompressionBombError`` when ``size`` has more than ``max_pixels`` pixels."""
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise Image.DecompressionBombError(
            f"image size {size[0]}x{size[1]} = {size[0] * size[1]} pixels exceeds --max_image_pixels={max_pixels} "
            "(a decompression bomb, or raise the limit)")


def has_transparency(image: Image.Image) -> bool:
    """Whether ``image`` carries transparency: an alpha band, or a ``transparency`` colour/palette entry."""
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def composite_on(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """``image`` alpha-composited onto an opaque ``background`` colour, as RGB."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*tuple(background)[:3], 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


# integer modes wider than 8 bits: Pillow's convert("RGB") clips them at 255 instead of scaling
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def to_8bit_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel; 16-bit (``I;16*``, ``I``) and float (``F``) images are scaled, not clipped.

    16-bit and 32-bit integer grey levels are read as 0..65535 (PNG's 16-bit range) and divided by 257;
    float images in 0..1 are multiplied by 255, others are taken as 0..255.
    """
    if image.mode not in _WIDE_INTEGER_MODES and image.mode != "F":
        return image.convert("RGB")
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 1.0 / 257.0
    grey = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # 2-D uint8: mode L


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
    *,
    add_special_tokens: bool = True,
) -> list[int] | torch.Tensor:
    """Tokenize ``prompt``, replacing every ``<image>`` with ``image_token_index``.

    Each text chunk between placeholders is tokenized on its own (upstream semantics). If the
    tokenizer prepends BOS, exactly one BOS is kept, at the very start. ``return_tensors='pt'``
    returns a 1-D ``LongTensor``; anything else but ``None`` is rejected.
    """
    bos = tokenizer.bos_token_id
    chunks = [
        tokenizer(chunk, add_special_tokens=add_special_tokens).input_ids
        for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)
    ]
    input_ids: list[int] = []
    strip_bos = bool(chunks and chunks[0] and bos is not None and chunks[0][0] == bos)
    if strip_bos:
        input_ids.append(bos)
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        if strip_bos and chunk and chunk[0] == bos:
            chunk = chunk[1:]
        input_ids.extend(chunk)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors {return_tensors!r}; use 'pt' or None")


def get_model_name_from_path(model_path: str) -> str:
    """Last path component, or ``<parent>_<last>`` when the last one is a ``checkpoint-*`` folder."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a sequence once any keyword appears in the text generated so far.

    Works whether or not the ids seen by the criteria include the prompt (generating from
    ``inputs_embeds`` gives only new tokens): the generated part starts where the first call saw it.
    Returns a bool tensor with one entry per batch row. Use one instance per ``generate`` call.
    """

    def __init__(
        self, keywords: Sequence[str], tokenizer: Any, input_ids: torch.Tensor | None = None
    ) -> None:
        if isinstance(keywords, str):
            keywords = [keywords]
        self.keywords = [k for k in keywords if k]
        if not self.keywords:
            raise ValueError("KeywordsStoppingCriteria needs at least one non-empty keyword")
        self.tokenizer = tokenizer
        self.keyword_ids: list[torch.Tensor] = []
        for keyword in self.keywords:
            ids = tokenizer(keyword, add_special_tokens=False).input_ids
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max(len(k) for k in self.keyword_ids)
        self.prompt_len = None if input_ids is None else int(input_ids.shape[-1])
        self._start: int | None = None

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if self._start is None:
            # First call: exactly one new token has been appended to whatever the ids contain.
            self._start = max(int(input_ids.shape[1]) - 1, 0)
        generated = input_ids[:, self._start :]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        window = min(generated.shape[1], self.max_keyword_len + 2)
        for row in range(input_ids.shape[0]):
            ids = generated[row]
            for keyword_ids in self.keyword_ids:
                n = keyword_ids.numel()
                if 0 < n <= ids.numel() and torch.equal(ids[-n:].cpu(), keyword_ids):
                    done[row] = True
                    break
            if done[row] or window == 0:
                continue
            text = self.tokenizer.decode(ids[-window:], skip_special_tokens=True)
            done[row] = any(keyword in text for keyword in self.keywords)
        return done
