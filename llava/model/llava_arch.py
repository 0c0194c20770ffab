"""LLaVA mixins: build the vision tower + projector, encode images, splice them into the LLM input.

``LlavaMetaModel`` goes in front of a family's base model (e.g. ``LlamaModel``);
``LlavaMetaForCausalLM`` in front of its causal-LM class. The add-ons come from the add-on
registry (:mod:`llava.model.addons.registry`); :meth:`LlavaMetaForCausalLM.encode_image_blocks_with_aux`
runs their stages in the documented order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
)

from .addons.base import Geometry, Stage
from .addons.registry import AddonPipeline, AddonRegistry
from .block_layout import BlockLayout, grid_layout
from .checkpoints import load_mm_projector, load_projector_addons, load_weights_file
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector
from .multimodal_splice import SpliceResult, splice_image_features
from .reference_layout import adapter_state


class LlavaMetaModel:
    """Adds ``vision_tower``, ``mm_projector`` and the add-on modules to a base model.

    ``addon_modules``: add-on modules from outside the package that this model may use (a saved
    config naming others is refused: loading never imports code on its own).
    """

    def __init__(self, config: Any, addon_modules: str | Sequence[str] | None = None) -> None:
        super().__init__(config)
        self.addon_registry = AddonRegistry.for_config(config, addon_modules)
        if getattr(config, "mm_vision_tower", None):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            self.addon_pipeline().build_modules(self)

    def addon_pipeline(self) -> AddonPipeline:
        """The enabled add-ons of the current config (cheap; reflects later config changes)."""
        return self.addon_registry.pipeline(self.config)

    def get_vision_tower(self) -> nn.Module | None:
        tower = getattr(self, "vision_tower", None)
        if isinstance(tower, list):
            tower = tower[0]
        return tower

    def initialize_vision_modules(self, model_args: Any, fsdp: Any = None) -> None:
        """Build/load the tower and projector from training arguments and record upstream config fields."""
        self.addon_registry = AddonRegistry.with_modules(getattr(model_args, "mm_addon_modules", None))
        self.config.mm_vision_tower = model_args.vision_tower
        tower = self.get_vision_tower()
        if tower is None:
            tower = build_vision_tower(model_args)
            self.vision_tower = [tower] if fsdp else tower
        else:
            tower.load_model()

        self.config.use_mm_proj = True
        self.config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")
        self.config.mm_vision_select_layer = model_args.mm_vision_select_layer
        self.config.mm_vision_select_feature = getattr(model_args, "mm_vision_select_feature", "patch")
        self.config.mm_patch_merge_type = getattr(model_args, "mm_patch_merge_type", "flat")
        geo = Geometry(tower_layers=tower.num_layers, tower_side=tower.num_patches_per_side,
                       tower_width=tower.hidden_size, has_cls=tower.select_feature == "cls_patch",
                       llm_width=self.config.hidden_size)
        self.addon_registry.configure(self.config, model_args, self, geo)
        pipeline = self.addon_pipeline()
        self.config.mm_hidden_size = pipeline.input_width(tower.hidden_size)

        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(self.config)
        else:
            for p in self.mm_projector.parameters():
                p.requires_grad = True
        pipeline.build_modules(self)  # after the projector, so add-ons never shift its random init

        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            state = adapter_state(adapter, load_weights_file)  # a reference-layout file is mapped first
            load_mm_projector(self.mm_projector, adapter, state=state)
            load_projector_addons(self, adapter, state=state)

    def projector_modules(self) -> list[nn.Module]:
        """The projector plus the add-on modules that travel with it (``mm_projector.bin``)."""
        return [self.mm_projector, *self.addon_pipeline().projector_modules(self)]


class LlavaMetaForCausalLM:
    """Multimodal input preparation shared by every LLaVA causal-LM family."""

    def get_model(self) -> nn.Module:
        return self.model

    def get_vision_tower(self) -> nn.Module | None:
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels -> (N, T, hidden) image tokens (upstream's signature)."""
        return self.encode_image_blocks(images)[0]

    def encode_image_blocks(self, images: torch.Tensor) -> tuple[torch.Tensor, BlockLayout]:
        """(N, T', hidden) blocks that replace the placeholders, and their layout."""
        tokens, layout, _, _ = self.encode_image_blocks_with_aux(images)
        return tokens, layout

    def encode_image_blocks_with_aux(
        self, images: torch.Tensor, pipe: AddonPipeline | None = None
    ) -> tuple[torch.Tensor, BlockLayout, torch.Tensor, torch.Tensor]:
        """The vision pipeline, stage by stage (:class:`~llava.model.addons.base.Stage`):

        tower (TOWER add-on picks from the hidden states, else ``mm_vision_select_layer``) ->
        PRE_PROJECTOR -> projector -> POST_PROJECTOR -> POST_NORM -> grid layout -> BLOCK.

        Returns the blocks, their layout, the projector input x and the raw projector output P1(x)
        (the last two feed the auxiliary losses). ``pipe``: the caller's add-on pipeline, if it has one.
        """
        model = self.get_model()
        pipe = pipe or model.addon_pipeline()
        tower = model.get_vision_tower()
        has_cls, side = tower.select_feature == "cls_patch", tower.num_patches_per_side
        feats = tower(images, select=pipe.tower_selector(model, side, has_cls))
        feats = pipe.run(Stage.PRE_PROJECTOR, feats, model, side, has_cls, images)
        projected = model.mm_projector(feats)
        tokens = pipe.run(Stage.POST_PROJECTOR, projected, model, side, has_cls, images)
        tokens = pipe.run(Stage.POST_NORM, tokens, model, side, has_cls, images)
        out_side = pipe.grid_side(side)
        layout = grid_layout(out_side, has_cls=has_cls, device=tokens.device)
        tokens, layout = pipe.run(Stage.BLOCK, (tokens, layout), model, out_side, has_cls, images)
        return tokens, layout, feats, projected

    @staticmethod
    def _stack_images(images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            parts = [im if im.ndim == 4 else im.unsqueeze(0) for im in images]
            images = torch.cat(parts, dim=0) if parts else torch.empty(0)
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, 3, H, W) or a list of (3, H, W); got shape {tuple(images.shape)}")
        return images

    def _check_image_size(self, images: torch.Tensor) -> None:
        tower_cfg = self.get_vision_tower().config
        expected = (3, tower_cfg.image_size, tower_cfg.image_size)
        if images.numel() and tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images have shape {tuple(images.shape)} but the vision tower expects (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); preprocess them with the tower's image processor "
                "(llava.mm_utils.process_images)."
            )

    def blank_images(self, device: torch.device) -> torch.Tensor:
        """One all-zero image in the tower's dtype (no parameter access: safe inside a ZeRO-3 forward)."""
        tower = self.get_vision_tower()
        size = tower.config.image_size
        return torch.zeros(1, 3, size, size, device=device, dtype=tower.dtype)

    def prepare_multimodal_splice(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: torch.Tensor | list[torch.Tensor],
        image_sizes: Any = None,
        padding_side: str | None = None,
        unused_images: bool = False,
        truncate: bool = True,
        segments: torch.Tensor | None = None,
    ) -> SpliceResult:
        """Encode ``images`` and splice them into ``input_ids``; returns the full :class:`SpliceResult`.

        ``unused_images``: the batch has no placeholders; the images are encoded and kept in the
        graph with zero weight (text-only training batches, see :func:`splice_image_features`).
        ``segments``: the sample ids of a packed batch (:mod:`llava.model.packing`).
        """
        images = self._stack_images(images)
        self._check_image_size(images)
        embed = self.get_model().embed_tokens
        pipe = self.get_model().addon_pipeline()
        aux = None
        if images.shape[0]:
            feats, layout, vision_x, projected = self.encode_image_blocks_with_aux(images, pipe)
            aux = (vision_x, projected)
        else:
            feats = torch.zeros(0, 1, embed.embedding_dim, device=input_ids.device, dtype=self.get_vision_tower().dtype)
            layout = None
        side = padding_side or getattr(self.config, "tokenizer_padding_side", "right")
        res = splice_image_features(
            input_ids, attention_mask, labels, feats, embed,
            max_length=getattr(self.config, "tokenizer_model_max_length", None), padding_side=side,
            layout=layout, two_d=pipe.uses_2d_positions, unused_images=unused_images, truncate=truncate,
            segments=segments,
        )
        if aux is not None:
            res.vision_features, res.projected = aux
        return res

    def auxiliary_losses(self, res: SpliceResult) -> dict[str, torch.Tensor]:
        """{name: L_i} of the enabled auxiliary losses (positive weight) on a spliced batch's images.

        A batch with only the blank image of a text-only batch keeps each term's graph at weight 0.
        """
        if res.vision_features is None:
            return {}
        model = self.get_model()
        tower = model.get_vision_tower()
        losses = model.addon_pipeline().aux_losses(model, res.vision_features, res.projected,
                                                   tower.num_patches_per_side, tower.select_feature == "cls_patch")
        if not bool(res.image_mask.any()):
            losses = {k: v * 0.0 for k, v in losses.items()}
        return losses

    def prepare_inputs_labels_for_multimodal(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        past_key_values: Any,
        labels: torch.Tensor | None,
        images: torch.Tensor | list[torch.Tensor] | None,
        image_sizes: Any = None,
        padding_side: str | None = None,
    ) -> tuple[None, torch.Tensor | None, torch.Tensor | None, Any, torch.Tensor | None, torch.Tensor | None]:
        """Upstream's signature and return value.

        Returns ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``.

        Without a vision tower or images the inputs come back unchanged (``input_ids`` first).
        """
        if self.get_vision_tower() is None or images is None:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        res = self.prepare_multimodal_splice(input_ids, attention_mask, labels, images, image_sizes, padding_side)
        return None, res.position_ids, res.attention_mask, past_key_values, res.inputs_embeds, res.labels

    def initialize_vision_tokenizer(self, model_args: Any, tokenizer: Any) -> None:
        """Add ``<im_patch>`` / ``<im_start>`` ``<im_end>`` tokens when the flags ask for them.

        Add-ons that need the tokenizer record what they need (``--interleave``: the coordinate
        strings' token ids).
        """
        tower = self.get_vision_tower()
        if tower is not None:
            pipe = self.get_model().addon_pipeline()
            pipe.configure_tokenizer(tokenizer, pipe.grid_side(tower.num_patches_per_side))
        if getattr(model_args, "mm_use_im_patch_token", False):
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))
        if getattr(model_args, "mm_use_im_start_end", False):
            added = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))
            inp = self.get_input_embeddings().weight.data
            out = self.get_output_embeddings().weight.data
            if added > 0:
                inp[-added:] = inp[:-added].mean(dim=0, keepdim=True)
                out[-added:] = out[:-added].mean(dim=0, keepdim=True)
            if getattr(model_args, "tune_mm_mlp_adapter", False):
                for p in self.get_input_embeddings().parameters():
                    p.requires_grad = True
                for p in self.get_output_embeddings().parameters():
                    p.requires_grad = False
            adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
            if adapter:
                from .checkpoints import load_weights_file

                weights = load_weights_file(adapter)
                key = "model.embed_tokens.weight"
                if key in weights:
                    emb = weights[key]
                    if emb.shape == inp.shape:
                        inp.copy_(emb)
                    elif emb.shape[0] == added:
                        inp[-added:] = emb
                    else:
                        raise ValueError(
                            f"{adapter}: embed_tokens has shape {tuple(emb.shape)}, expected {tuple(inp.shape)} "
                            f"or ({added}, ...) for the added image tokens."
                        )


def image_tokens_per_sample(model: Any, tower: Any) -> int:
    """Tokens one image occupies in the LLM sequence (after every add-on: compression, interleave ...)."""
    return model.get_model().addon_pipeline().tokens_per_image(getattr(tower, "num_tokens", tower.num_patches))
