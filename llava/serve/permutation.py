"""The permutation probe's switch for the inference CLIs (the VQA loader, the chat CLI): ``--permute-image-tokens``
and ``--permute-seed``, checked, and :func:`enable_permutation`, which writes the add-on's typed config on a
loaded model's config in memory (nothing is saved). The report comparing answers is
:mod:`llava.eval.permutation_report`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from llava.model.addons.base import read_config, write_config

PROBE_ADDON = "permute"
"""The ``name`` the permutation add-on declares in the add-on registry."""


def add_permutation_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--permute-image-tokens`` and ``--permute-seed`` (shared by the VQA loader and the chat CLI)."""
    p.add_argument("--permute-image-tokens", action="store_true", help="permutation probe: shuffle each image's "
                   "tokens after the projector (and any compression) by a random permutation seeded by "
                   "--permute-seed and the image's pixels; the layout stays")
    p.add_argument("--permute-seed", type=int, default=None, help="seed of --permute-image-tokens (default 0)")
    return p


def check_permutation_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for ``--permute-seed`` without ``--permute-image-tokens``."""
    if args.permute_seed is not None and not args.permute_image_tokens:
        raise ValueError("--permute-seed has no effect without --permute-image-tokens: add that flag or drop "
                         "--permute-seed.")


def parse_checked(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and check the permutation flags; a misuse is one line on stderr and exit 2."""
    args = p.parse_args(argv)
    try:
        check_permutation_args(args)
    except ValueError as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    return args


def probe_addon(model: Any) -> type:
    """The permutation add-on class of ``model``'s add-on registry (exact ``name`` match)."""
    base = model.get_model() if hasattr(model, "get_model") else None
    registry = getattr(base, "addon_registry", None)
    if registry is None or base.get_vision_tower() is None:
        raise ValueError("--permute-image-tokens needs a LLaVA model with a vision tower.")
    found = [a for a in registry.addons if a.name == PROBE_ADDON]
    if len(found) != 1:
        raise ValueError(f"the model's add-on registry has {len(found)} add-ons named {PROBE_ADDON!r}; expected 1.")
    return found[0]


def enable_permutation(model: Any, seed: int | None = None) -> None:
    """Switch the permutation probe on for a loaded model (``seed`` None: the add-on's default, 0).

    Writes the add-on's typed config on the model's config (in memory only).
    """
    addon = probe_addon(model)
    base = model.get_model()
    cfg = read_config(base.config, addon)
    seed = dict(addon.config_defaults)["permute_seed"] if seed is None else int(seed)
    write_config(base.config, dataclasses.replace(cfg, permute_image_tokens=True, permute_seed=seed))
