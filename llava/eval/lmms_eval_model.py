"""lmms-eval model ``llava_beyond``: any checkpoint of this repo under lmms-eval's own CLI.

    lmms-eval --model llava_beyond \\
        --model_args pretrained=CKPT[,model_base=BASE][,conv_template=vicuna_v1][,device=cuda] \\
        --tasks gqa,pope --batch_size 8 --output_path results/

lmms-eval 0.7 finds the model through the ``lmms_eval.models`` entry-point group of
``pyproject.toml``: :func:`lmms_eval_manifest` returns the manifest naming :class:`LlavaBeyond`.
Checkpoints load with :func:`llava.model.builder.load_pretrained_model` (full, LoRA + ``model_base``,
projector-only + ``model_base``; add-on flags come from ``config.json``, so every add-on works).

``--model_args`` keys: ``pretrained`` (required), ``model_base``, ``conv_template`` (default
``llava_v1``, or ``chat_template`` when the tokenizer has one; LLaVA-1.5's evaluation uses
``vicuna_v1``), ``device``, ``dtype`` (``float16``/``bfloat16``/``float32``), ``use_flash_attn``,
``addon_modules`` (external add-on modules, ``;``-separated), ``max_new_tokens`` (default when a task
sets none). ``batch_size`` comes from ``--batch_size``.

``generate_until``: left-padded batches, greedy unless the task asks for sampling; the text is cut at
the task's ``until`` strings and the template's stop string. A task's ``image_aspect_ratio``
generation kwarg is ignored: images are preprocessed as the checkpoint was trained.

``loglikelihood``: context and continuation are scored in one forward pass; the continuation is the
last tokens of the sequence, so its log-probabilities are read from the end of the logits, whatever
number of tokens the images expanded to. Each request returns ``(-sum log p(continuation), greedy)``:
lmms-eval 0.7's multiple-choice scoring takes the *argmin* of this value (the convention of its
bundled models, which return a loss), so the negated log-likelihood makes it pick the most likely
choice. lmms-eval 0.7.3's evaluator turns a plain ``(float, bool)`` response into its ``str`` (its
``unwrap_generation_output`` keeps only strings), which breaks every multiple-choice task; where the
installed lmms-eval does that, the pair is handed over as the ``text`` of a ``GenerationResult``, which
it passes through unchanged (``--use_cache`` then fails on loglikelihood tasks: its cache expects
string texts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

try:
    from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
    from lmms_eval.api.model import lmms
except ImportError as err:  # only lmms-eval imports this module (through its entry point)
    raise ImportError("llava.eval.lmms_eval_model needs lmms-eval: pip install -e '.[lmms-eval]'") from err

from llava.conversation import SeparatorStyle, conv_templates
from llava.eval.model_vqa_loader import left_pad
from llava.mm_utils import KeywordsStoppingCriteria, process_images, to_8bit_rgb, tokenizer_image_token
from llava.serve.inference import default_conv_mode, new_conversation, pad_token_id, stop_string, with_image_tokens

MODEL_ID = "llava_beyond"
DTYPES = MappingProxyType({"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32})
# Keys of --model_args that lmms-eval itself passes to every model and that this one does not use.
IGNORED_ARGS = ("max_batch_size",)


def lmms_eval_manifest() -> Any:
    """The ``lmms_eval.models`` entry point: registers ``--model llava_beyond``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaBeyond")


def _pick_device(device: str | None) -> str:
    if device:
        return str(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate / torchrun data parallel
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_batch_size(batch_size: int | str) -> int:
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"--batch_size {batch_size!r}: llava_beyond takes a positive integer (no 'auto')")
    return value


def _check_conv_template(name: str) -> None:
    if name not in conv_templates:
        raise ValueError(f"--model_args conv_template={name}: unknown; use one of {', '.join(sorted(conv_templates))}")


def _parse_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype in (None, "", "auto"):
        return None
    if dtype not in DTYPES:
        raise ValueError(f"--model_args dtype={dtype}: use one of {', '.join(DTYPES)} (or auto)")
    return DTYPES[dtype]


class LlavaBeyond(lmms):
    """lmms-eval's ``lmms`` interface over a checkpoint of this repo (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, model_base: str | None = None, conv_template: str | None = None,
                 device: str | None = None, batch_size: int | str = 1, dtype: str | None = None,
                 use_flash_attn: bool = False, addon_modules: str | None = None, max_new_tokens: int = 1024,
                 **kwargs: Any) -> None:
        super().__init__()
        if not pretrained:
            raise ValueError("--model_args pretrained=CHECKPOINT is required (a checkpoint folder of this repo)")
        unknown = sorted(k for k in kwargs if k not in IGNORED_ARGS)
        if unknown:
            raise ValueError(f"--model_args: unknown key(s) {', '.join(unknown)} for llava_beyond; valid: pretrained, "
                             "model_base, conv_template, device, dtype, use_flash_attn, addon_modules, max_new_tokens")
        if conv_template:
            _check_conv_template(str(conv_template))  # before the (slow) load
        from llava.model.builder import load_pretrained_model

        self._device = torch.device(_pick_device(device))
        self.batch_size_per_gpu = _parse_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        modules = str(addon_modules).replace(";", ",") if addon_modules else None
        self._tokenizer, self._model, self._image_processor, self._max_length = load_pretrained_model(
            os.path.expanduser(str(pretrained)), model_base, None, device=str(self._device),
            torch_dtype=_parse_dtype(dtype), use_flash_attn=bool(use_flash_attn), addon_modules=modules)
        self.pad_id = pad_token_id(self._tokenizer)
        if self.pad_id is None:
            raise ValueError(f"the tokenizer of {pretrained!r} has neither a pad nor an eos token; cannot batch")
        self.conv_template = str(conv_template) if conv_template else default_conv_mode(self._tokenizer)
        self.templated = new_conversation(self.conv_template).sep_style == SeparatorStyle.TEMPLATE
        self.start_end = bool(getattr(self._model.config, "mm_use_im_start_end", False))
        # Whether the evaluator keeps a (float, bool) response as it is (see the module docstring).
        self.plain_pairs = unwrap_generation_output((0.0, True))[0] == (0.0, True)

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def max_length(self) -> int:
        return self._max_length

    # ---- requests -> prompts and images -------------------------------------------------------

    def _doc_images(self, doc_to_visual: Callable | None, doc_id: Any, task: str | None,
                    split: str | None) -> list[Image.Image]:
        """The RGB images of one request (``doc_to_visual`` of its document; none for text-only requests)."""
        if doc_to_visual is None or task is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        flat = [v for item in visuals for v in (item if isinstance(item, (list, tuple)) else [item])]
        for v in flat:
            if not isinstance(v, Image.Image):
                raise ValueError(f"task {task}: llava_beyond takes images only; doc_to_visual gave a "
                                 f"{type(v).__name__} (video and audio tasks are not supported)")
        return [to_8bit_rgb(v) for v in flat]

    def _prompt(self, context: str, n_images: int) -> tuple[str, str | None]:
        """(the prompt up to the assistant's answer, the template's stop string)."""
        conv = new_conversation(self.conv_template)
        conv.append_message(conv.roles[0], with_image_tokens(context, n_images, self.start_end))
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt(self._tokenizer), stop_string(conv)

    def _encode(self, text: str) -> list[int]:
        """Token ids with -200 at each image (a tokenizer chat template adds its own special tokens)."""
        return tokenizer_image_token(text, self._tokenizer, add_special_tokens=not self.templated)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 3, H, W) pixels in the model's dtype; N may be 0."""
        if not images:
            size = self._model.get_vision_tower().config.image_size
            return torch.zeros(0, 3, size, size, device=self._device, dtype=self._model.dtype)
        return process_images(list(images), self._image_processor, self._model.config).to(
            device=self._device, dtype=self._model.dtype)

    def _batches(self, requests: Sequence[Instance], key: Callable[[Instance], str]) -> list[list[int]]:
        """Request indices in batches of ``batch_size``, one key per batch, longest contexts first."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(key(req), []).append(i)
        batches = []
        for idx in groups.values():
            idx.sort(key=lambda i: -len(str(requests[i].args[0])))
            batches += [idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
        return batches

    # ---- generate_until -----------------------------------------------------------------------

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``generate`` kwargs from a task's ``generation_kwargs`` (greedy unless it asks for sampling)."""
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        sample = bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
        settings: dict[str, Any] = dict(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
                                        num_beams=int(gen_kwargs.get("num_beams") or 1), do_sample=sample,
                                        use_cache=True, pad_token_id=self.pad_id)
        if sample:
            settings.update(temperature=temperature, top_p=gen_kwargs.get("top_p"))
        return settings

    def _generate_batch(self, requests: Sequence[Instance]) -> list[str]:
        gen_kwargs = dict(requests[0].args[1] or {})
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        prompts, images, template_stop = [], [], None
        for req in requests:
            context, _, doc_to_visual, doc_id, task, split = req.args
            imgs = self._doc_images(doc_to_visual, doc_id, task, split)
            text, template_stop = self._prompt(context, len(imgs))
            prompts.append(torch.tensor(self._encode(text), dtype=torch.long))
            images += imgs
        stops = [s for s in [template_stop, *until] if s]
        ids, mask = left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self._device), mask.to(self._device)
        settings = self._generation_settings(gen_kwargs)
        if stops and settings["num_beams"] == 1:
            settings["stopping_criteria"] = [KeywordsStoppingCriteria(stops, self._tokenizer, ids)]
        pixels = self._pixels(images) if images else None
        with torch.inference_mode():
            out = self._model.generate(ids, attention_mask=mask, images=pixels, **settings)
        texts = []
        for text in self._tokenizer.batch_decode(out, skip_special_tokens=True):
            for stop in stops:
                text = text.split(stop)[0]
            texts.append(text.strip())
        return texts

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request (``args``: context, generation kwargs, doc_to_visual, doc_id, task, split)."""
        results: list[str] = [""] * len(requests)
        batches = self._batches(requests, lambda r: json.dumps(r.args[1], sort_keys=True, default=str))
        for batch in tqdm(batches, disable=self.rank != 0, desc="llava_beyond generate_until"):
            for i, text in zip(batch, self._generate_batch([requests[i] for i in batch])):
                results[i] = text
        return results

    # ---- loglikelihood ------------------------------------------------------------------------

    def _scoring_item(self, req: Instance) -> tuple[list[int], list[int], list[Image.Image]]:
        """(context ids, continuation ids, images) of one loglikelihood request."""
        args = req.args
        context, continuation = args[0], args[1]
        doc_to_visual, doc_id, task, split = (list(args[2:6]) + [None] * 4)[:4]
        if callable(continuation):  # output_type loglikelihood passes doc_to_target itself
            continuation = continuation(self.task_dict[task][split][doc_id])
        continuation = str(continuation)
        images = self._doc_images(doc_to_visual, doc_id, task, split)
        prompt, _ = self._prompt(context, len(images))
        if prompt[-1:].isspace():  # the answer starts right after a newline-ended prompt
            continuation = continuation.lstrip(" ")
        if not continuation:
            raise ValueError(f"task {task}: a loglikelihood request has an empty continuation (doc {doc_id})")
        ctx_ids, full = self._encode(prompt), self._encode(prompt + continuation)
        if len(full) > len(ctx_ids) and full[:len(ctx_ids)] == ctx_ids:
            return ctx_ids, full[len(ctx_ids):], images
        # The join changed the context's last tokens: score the continuation tokenized on its own.
        cont = self._tokenizer(continuation, add_special_tokens=False).input_ids
        return ctx_ids, cont, images

    def _forward_logits(self, ids: torch.Tensor, mask: torch.Tensor, images: list[Image.Image],
                        keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions of each left-padded row, images spliced in."""
        model = self._model
        if model.get_vision_tower() is None:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        res = model.prepare_multimodal_splice(ids, mask, None, self._pixels(images), padding_side="left",
                                              truncate=False)
        return model(inputs_embeds=res.inputs_embeds, attention_mask=res.attention_mask,
                     position_ids=res.position_ids, logits_to_keep=keep).logits

    def _score_batch(self, items: Sequence[tuple[list[int], list[int], list[Image.Image]]]) -> list[tuple[float, bool]]:
        seqs = [torch.tensor(ctx + cont, dtype=torch.long) for ctx, cont, _ in items]
        ids, mask = left_pad(seqs, self.pad_id)
        keep = max(len(cont) for _, cont, _ in items) + 1
        images = [img for _, _, imgs in items for img in imgs]
        with torch.inference_mode():
            logits = self._forward_logits(ids.to(self._device), mask.to(self._device), images, keep)
        scores = []
        for row, (_, cont, _) in enumerate(items):
            # Left padding puts every row's continuation at the end: position -k-1 predicts token -k.
            n = len(cont)
            logprobs = logits[row, keep - n - 1: keep - 1].float().log_softmax(-1)
            target = torch.tensor(cont, device=logprobs.device)
            total = logprobs.gather(-1, target[:, None]).sum()
            scores.append((-float(total), bool((logprobs.argmax(-1) == target).all())))
        return scores

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool] | GenerationResult]:
        """``(-sum log p(continuation | context, images), continuation is greedy)`` per request
        (wrapped in a ``GenerationResult`` where the evaluator would stringify a plain pair)."""
        results: list[Any] = [None] * len(requests)
        batches = self._batches(requests, lambda r: "")
        for batch in tqdm(batches, disable=self.rank != 0, desc="llava_beyond loglikelihood"):
            items = [self._scoring_item(requests[i]) for i in batch]  # images are read batch by batch
            for i, score in zip(batch, self._score_batch(items)):
                results[i] = score if self.plain_pairs else GenerationResult(text=score)
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("llava_beyond does not implement multi-round generation; use single-round tasks")
