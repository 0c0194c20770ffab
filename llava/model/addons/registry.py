"""The add-on registry: the built-in add-ons, add-ons from outside the package, and the pipeline.

:data:`BUILTIN_ADDONS` is the one list of built-in add-ons (its order is the order of every hook:
projector-input width, grid side, token count, module creation, and the stages within a stage).
Add-ons from outside the package come from modules the user names explicitly
(``--mm_addon_modules my_pkg.my_addon``; ``load_pretrained_model(..., addon_modules=[...])``):
such a module defines ``ADDONS``, a tuple of :class:`~llava.model.addons.base.Addon` subclasses.
A checkpoint records the module names in ``config.json`` (``mm_addon_modules``) but loading never
imports them on its own: a missing one is a one-line error naming the module to pass.

:class:`AddonPipeline` is the run-time view of one model config: the enabled add-ons with their
typed configs, the geometry they imply, their modules and stages, and the auxiliary losses.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import compression, coordinates, cosine_reg, interleave, multilayer, normalize, permute, registers, rope2d
from .base import Addon, Geometry, Stage, StageContext, arg, dependent_flags, read_config, write_config

BUILTIN_ADDONS: tuple[type[Addon], ...] = (
    multilayer.Multilayer,
    coordinates.Coordinates,
    normalize.Normalize,
    compression.Compression,
    rope2d.Rope2D,
    interleave.Interleave,
    cosine_reg.CosineRegularizer,
    registers.Registers,
    permute.Permute,
)
MODULES_KEY = "mm_addon_modules"


def builtin_addon(name: str) -> type[Addon]:
    """The built-in add-on whose ``name`` is ``name`` (names are unique; ``KeyError`` for an unknown one)."""
    return {a.name: a for a in BUILTIN_ADDONS}[name]


def parse_module_list(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a.b,c"`` or ``["a.b", "c"]`` -> ``("a.b", "c")``."""
    if not spec:
        return ()
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(p.strip() for p in parts if p.strip())


def _import_addons(module_name: str) -> tuple[type[Addon], ...]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--mm_addon_modules {module_name}: cannot import it ({err}); check the name and "
                         "that its folder is on PYTHONPATH.") from None
    addons = getattr(module, "ADDONS", None)
    if not isinstance(addons, tuple) or not addons or not all(
            isinstance(a, type) and issubclass(a, Addon) for a in addons):
        raise ValueError(f"--mm_addon_modules {module_name}: the module must define ADDONS, a non-empty tuple "
                         "of llava.model.addons.base.Addon subclasses.")
    return addons


def _check_unique(addons: Sequence[type[Addon]]) -> None:
    """No two add-ons may share a name, a flag, a config key or a module attribute."""
    owner: dict[tuple[str, str], str] = {}
    for a in addons:
        names = {("name", a.name)} | {("module", m) for m in a.modules}
        names |= {("flag", f.name) for f in (dataclasses.fields(a.Args) if a.Args else ())}
        names |= {("config key", f.name) for f in dataclasses.fields(a.Config)}
        for kind, n in names:
            other = owner.setdefault((kind, n), a.name)
            if other != a.name:
                raise ValueError(f"add-ons {other} and {a.name} both declare the {kind} {n!r}; rename one.")


@dataclass(frozen=True)
class AddonRegistry:
    """The built-in add-ons plus those of the explicitly named ``external`` modules."""

    addons: tuple[type[Addon], ...] = BUILTIN_ADDONS
    external: tuple[str, ...] = ()

    @classmethod
    def with_modules(cls, modules: str | Sequence[str] | None) -> AddonRegistry:
        """Import the named add-on modules (the user asked for them) and register their add-ons."""
        names = parse_module_list(modules)
        extra = [a for name in names for a in _import_addons(name)]
        addons = BUILTIN_ADDONS + tuple(extra)
        _check_unique(addons)
        return cls(addons=addons, external=names)

    @classmethod
    def for_config(cls, config: Any, given: str | Sequence[str] | None) -> AddonRegistry:
        """The registry a saved model needs; its external modules must be among ``given``."""
        given_names = parse_module_list(given)
        needed = parse_module_list(getattr(config, MODULES_KEY, None))
        missing = [m for m in needed if m not in given_names]
        if missing:
            raise ValueError(
                f"this checkpoint uses the add-on module(s) {', '.join(missing)}, which are never imported "
                f"because config.json names them: pass addon_modules={list(needed)} to load_pretrained_model "
                f"(--mm_addon_modules {','.join(needed)} on the command line) if you trust that code.")
        return cls.with_modules(tuple(dict.fromkeys(needed + given_names)))

    def arguments_class(self, base: type) -> type:
        """``base`` (a dataclass) extended with every add-on's flags, for ``HfArgumentParser``."""
        mixins = tuple(a.Args for a in self.addons if a.Args is not None)
        return dataclasses.make_dataclass(base.__name__, [], bases=(base, *reversed(mixins)))

    def module_attributes(self) -> tuple[str, ...]:
        return tuple(m for a in self.addons for m in a.modules)

    def pipeline(self, config: Any) -> AddonPipeline:
        return AddonPipeline(self, config)

    # ---- flags ----
    def enabled_from_args(self, args: Any) -> list[tuple[type[Addon], Any]]:
        """Check dependent flags, then map the flags of every switched-on add-on to its config."""
        on = []
        for a in self.addons:
            if a.Args is None:
                continue
            if a.args_on(args):
                on.append((a, a.from_args(args)))
                continue
            for f in dependent_flags(a):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                if arg(args, a, f.name) != default:
                    raise ValueError(f"--{f.name} has no effect without {a.switch_hint()}: add that flag or "
                                     f"drop --{f.name}.")
        return on

    def validate(self, on: Iterable[tuple[type[Addon], Any]], geo: Geometry) -> Geometry:
        """Validate the enabled add-ons' configs against ``geo``; returns it with the derived sizes."""
        on = list(on)
        width, side = geo.tower_width, geo.tower_side
        for a, c in on:
            width = a.input_width(c, width)
        for a, c in on:
            a.validate(c, dataclasses.replace(geo, mm_hidden_size=width, out_side=side))
            side = a.grid_side(c, side)
        return dataclasses.replace(geo, mm_hidden_size=width, out_side=side)

    def configure(self, config: Any, args: Any, base_model: nn.Module, geo: Geometry) -> None:
        """Validate the flags in ``args`` and record the enabled add-ons' configs on ``config``."""
        on = self.enabled_from_args(args)
        geo = self.validate(on, geo)
        for a, c in on:
            write_config(config, a.finalize(c, base_model, geo))
        if self.external:
            setattr(config, MODULES_KEY, list(self.external))


class AddonPipeline:
    """The enabled add-ons of one model config, in registry order, with their typed configs."""

    def __init__(self, registry: AddonRegistry, config: Any) -> None:
        self.config = config
        items = [(a, read_config(config, a)) for a in registry.addons]
        self.enabled = [(a, c) for a, c in items if a.enabled(c)]

    def input_width(self, width: int) -> int:
        for a, c in self.enabled:
            width = a.input_width(c, width)
        return width

    def grid_side(self, side: int) -> int:
        for a, c in self.enabled:
            side = a.grid_side(c, side)
        return side

    def tower_layers(self, select_layer: int) -> list[int]:
        """The tower hidden-state indices the image features come from (``select_layer`` unless an add-on reads
        others, e.g. multi-layer features)."""
        layers = [select_layer]
        for a, c in self.enabled:
            layers = a.tower_layers(c, layers)
        return layers

    def tokens_per_image(self, tower_tokens: int) -> int:
        """Sequence positions one image occupies after every add-on."""
        n = tower_tokens
        for a, c in self.enabled:
            n = a.tokens(c, n)
        return n

    @property
    def uses_2d_positions(self) -> bool:
        return any(a.uses_2d_positions for a, _ in self.enabled)

    # ---- modules ----
    def build_modules(self, base_model: nn.Module) -> None:
        """Create the modules the enabled add-ons ask for (those missing) and install their changes."""
        for a, c in self.enabled:
            if any(getattr(base_model, m, None) is None for m in a.modules):
                for attr, module in a.build(c, base_model.config).items():
                    if getattr(base_model, attr, None) is None:
                        setattr(base_model, attr, module)
            a.install(c, base_model)

    def projector_modules(self, base_model: nn.Module) -> list[nn.Module]:
        """The add-on modules that travel with the projector."""
        return [module for _, module in self.module_states(base_model)]

    def travelling_module_names(self) -> list[str]:
        """Attribute names of the enabled add-ons' modules that travel with the projector."""
        return [m for a, _ in self.enabled for m, travels in a.modules.items() if travels]

    def module_states(self, base_model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(attribute, module) of every add-on module that travels with the projector."""
        return [(m, getattr(base_model, m)) for m in self.travelling_module_names()
                if getattr(base_model, m, None) is not None]

    def _ctx(self, a: type[Addon], base_model: nn.Module, side: int, has_cls: bool,
             images: torch.Tensor | None = None) -> StageContext:
        return StageContext(base_model=base_model, side=side, has_cls=has_cls,
                            modules={m: getattr(base_model, m) for m in a.modules}, images=images)

    def tower_selector(self, base_model: nn.Module, side: int, has_cls: bool) -> Any:
        """A hidden-states -> features function from the TOWER-stage add-on, or None."""
        for a, c in self.enabled:
            if a.stage == Stage.TOWER:
                ctx = self._ctx(a, base_model, side, has_cls)
                return lambda hidden_states, a=a, c=c, ctx=ctx: a.apply(c, hidden_states, ctx)
        return None

    def run(self, stage: Stage, x: Any, base_model: nn.Module, side: int, has_cls: bool,
            images: torch.Tensor | None = None) -> Any:
        """Apply every enabled add-on of ``stage`` in registry order (``images``: the pixels being encoded)."""
        for a, c in self.enabled:
            if a.stage == stage:
                x = a.apply(c, x, self._ctx(a, base_model, side, has_cls, images))
        return x

    def configure_tokenizer(self, tokenizer: Any, side: int) -> None:
        for a, c in self.enabled:
            new = a.configure_tokenizer(c, tokenizer, side)
            if new is not c:
                write_config(self.config, new)

    # ---- auxiliary losses ----
    def aux_weights(self) -> dict[str, float]:
        """{name: lambda} of the enabled auxiliary losses."""
        return {a.aux_name: a.aux_weight(c) for a, c in self.enabled if a.aux_name}

    def aux_weight_keys(self) -> dict[str, str]:
        return {a.aux_name: a.aux_weight_key for a, _ in self.enabled if a.aux_name and a.aux_weight_key}

    def aux_losses(self, base_model: nn.Module, vision_x: torch.Tensor, projected: torch.Tensor,
                   side: int, has_cls: bool) -> dict[str, torch.Tensor]:
        """{name: L_i} of every auxiliary loss with a positive weight."""
        out = {}
        for a, c in self.enabled:
            if a.aux_name and a.aux_weight(c) > 0:
                out[a.aux_name] = a.aux_loss(c, self._ctx(a, base_model, side, has_cls), vision_x, projected)
        return out

