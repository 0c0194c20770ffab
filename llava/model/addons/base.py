"""The add-on contract: what one add-on module declares, and the typed view over ``config.json``.

An add-on is a subclass of :class:`Addon` with class attributes and classmethods only (no state):

* ``Args``: a dataclass of its command-line flags (every field with a default and help text);
  ``switch`` names the flag that turns it on, every other field depends on it;
* ``Config``: a dataclass of its ``config.json`` keys and their defaults; read and written only
  through :func:`read_config` / :func:`write_config` (exact keys; a vanilla config carries none);
* ``from_args`` maps flags to a ``Config``; ``validate`` checks it against the tower geometry
  before any weight loads; ``finalize`` fills what needs the live model (e.g. embedding norms);
* ``modules``: the ``nn.Module`` attributes it puts on the base model, and whether each travels
  with the projector (saved in ``mm_projector.bin``, frozen/unfrozen and given ``--mm_projector_lr``
  with it); ``build`` creates them;
* ``stage``: where it acts in the vision pipeline (:class:`Stage`), and the geometry hooks
  ``input_width`` / ``grid_side`` / ``tokens`` (projector input width, token-grid side, tokens per
  image);
* optionally an auxiliary loss (``aux_name``, ``aux_weight``, ``aux_loss``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


class Stage(enum.IntEnum):
    """Where an add-on acts; ``encode_images`` runs the stages in this order."""

    TOWER = 0
    """Chooses the vision features from the tower's hidden states (replaces the single layer pick)."""
    PRE_PROJECTOR = 1
    """Transforms the projector input x (N, T, mm_hidden)."""
    POST_PROJECTOR = 2
    """Transforms the projected tokens P1(x) (N, T, hidden)."""
    POST_NORM = 3
    """Transforms the tokens after the post-projector stage (may change the grid, e.g. pooling)."""
    BLOCK = 4
    """Rewrites the whole image block and its layout (inserted or appended tokens)."""


@dataclass(frozen=True)
class Geometry:
    """What validation may know before weights load: the tower's and the LLM's config.json."""

    tower_layers: int
    tower_side: int
    tower_width: int
    has_cls: bool
    llm_width: int | None = None
    mm_hidden_size: int | None = None
    """Projector input width after every enabled add-on's ``input_width``."""
    out_side: int | None = None
    """Token-grid side after every enabled add-on's ``grid_side``."""


@dataclass
class StageContext:
    """What a stage sees at run time: the base model, the grid side, the add-on's own modules and the
    (N, 3, H, W) pixels of the images being encoded (one row per image, as the tower received them)."""

    base_model: nn.Module
    side: int
    has_cls: bool
    modules: Mapping[str, nn.Module]
    images: torch.Tensor | None = None


class Addon:
    """Base class of every add-on; see the module docstring for the contract."""

    name: ClassVar[str]
    Args: ClassVar[type | None] = None
    Config: ClassVar[type]
    switch: ClassVar[str]
    stage: ClassVar[Stage | None] = None
    modules: ClassVar[Mapping[str, bool]] = {}
    uses_2d_positions: ClassVar[bool] = False
    aux_name: ClassVar[str | None] = None
    aux_weight_key: ClassVar[str | None] = None
    config_defaults: ClassVar[tuple[tuple[str, Any], ...]] = ()
    """(key, default) of ``Config``, computed once per class (the typed view reads through it)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            cls.config_defaults = tuple(
                (f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls.Config))

    # ---- flags ----
    @classmethod
    def args_on(cls, args: Any) -> bool:
        """True when the flags switch this add-on on."""
        return bool(arg(args, cls, cls.switch))

    @classmethod
    def switch_hint(cls) -> str:
        """How to switch it on, for messages about its dependent flags."""
        return f"--{cls.switch} True"

    @classmethod
    def from_args(cls, args: Any) -> Any:
        """The config this add-on records for ``args`` (called only when :meth:`args_on`)."""
        raise NotImplementedError

    @classmethod
    def validate(cls, cfg: Any, geo: Geometry) -> None:
        """Raise ``ValueError`` naming the flag when ``cfg`` does not fit the geometry."""

    @classmethod
    def finalize(cls, cfg: Any, base_model: nn.Module, geo: Geometry) -> Any:
        """Fill fields that need the live model or the derived geometry (default: none); returns the config."""
        return cfg

    # ---- config ----
    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return bool(getattr(cfg, cls.config_defaults[0][0]))

    # ---- geometry ----
    @classmethod
    def input_width(cls, cfg: Any, width: int) -> int:
        return width

    @classmethod
    def grid_side(cls, cfg: Any, side: int) -> int:
        return side

    @classmethod
    def tokens(cls, cfg: Any, n: int) -> int:
        return n

    @classmethod
    def tower_layers(cls, cfg: Any, layers: list[int]) -> list[int]:
        """The tower hidden-state indices the features are read from, given those read so far."""
        return layers

    # ---- modules and run time ----
    @classmethod
    def build(cls, cfg: Any, model_config: Any) -> dict[str, nn.Module]:
        """New modules, keyed by the attribute names in ``modules``."""
        return {}

    @classmethod
    def install(cls, cfg: Any, base_model: nn.Module) -> None:
        """Changes to existing modules of the base model (idempotent); default: none."""

    @classmethod
    def configure_tokenizer(cls, cfg: Any, tokenizer: Any, side: int) -> Any:
        """Fields that need the tokenizer; returns the config to record (default unchanged)."""
        return cfg

    @classmethod
    def apply(cls, cfg: Any, x: Any, ctx: StageContext) -> Any:
        """Run the add-on's stage (TOWER: hidden states -> features; BLOCK: (tokens, layout) pair)."""
        raise NotImplementedError

    @classmethod
    def aux_weight(cls, cfg: Any) -> float:
        return float(getattr(cfg, cls.aux_weight_key) or 0.0) if cls.aux_weight_key else 0.0

    @classmethod
    def aux_loss(cls, cfg: Any, ctx: StageContext, vision_x: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """Auxiliary loss on the projector input x and output P1(x) of the real images."""
        raise NotImplementedError


def read_config(config: Any, addon: type[Addon]) -> Any:
    """The add-on's typed config read from a model config (absent keys take their defaults)."""
    stored = vars(config)  # plain dict lookups: PretrainedConfig.__getattribute__ is slow in a forward
    return addon.Config(**{name: stored.get(name, default) for name, default in addon.config_defaults})


def write_config(config: Any, cfg: Any) -> None:
    """Record the fields of a typed add-on config on the model config (None is not written as a new key)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is not None or hasattr(config, f.name):
            setattr(config, f.name, value)


def arg(args: Any, addon: type[Addon], name: str) -> Any:
    """A flag of ``addon`` from parsed arguments (or a namespace that lacks it: its default)."""
    if hasattr(args, name):
        return getattr(args, name)
    field = {f.name: f for f in dataclasses.fields(addon.Args)}[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def dependent_flags(addon: type[Addon]) -> list[dataclasses.Field]:
    """Every flag of ``addon`` except its switch."""
    return [f for f in dataclasses.fields(addon.Args) if f.name != addon.switch] if addon.Args else []
