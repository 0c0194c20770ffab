"""Make a ``GenerationConfig`` self-consistent so ``save_pretrained`` does not refuse it.

Many base LLMs (Vicuna, Llama-2 chat ...) ship a ``generation_config.json`` with sampling values
(``temperature``, ``top_p``) but ``do_sample`` false. transformers validates strictly on save and
raises, which upstream LLaVA users hit at the very end of a long training run. The policy here
keeps the author's decoding *mode* (greedy stays greedy, ``do_sample`` is left untouched) and
resets the values that only matter in another mode to the library defaults.

:func:`sanitize_generation_config` is pure with respect to everything but the object it is given:
no logging, no I/O; it returns human-readable lines describing each change so callers (the trainer,
the ``patches/`` CLI) can log or print them.
"""

from __future__ import annotations

from typing import Any

from transformers import GenerationConfig

# Values that only matter when sampling (do_sample=True).
SAMPLING_ONLY_FIELDS = ("temperature", "top_p", "top_k", "min_p", "top_h", "typical_p", "epsilon_cutoff",
                        "eta_cutoff")
# Values that only matter with beam search (num_beams > 1).
BEAM_ONLY_FIELDS = ("early_stopping", "length_penalty")
# Values that are harmless when equal to these (the library treats them as "off").
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "temperature": (None, 1.0),
    "top_p": (None, 1.0),
    "top_k": (None, 50),
    "min_p": (None,),
    "top_h": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "early_stopping": (None, False),
    "length_penalty": (None, 1.0),
}


def _reset(gen_config: GenerationConfig, defaults: GenerationConfig, name: str, why: str,
           changes: list[str]) -> None:
    if not hasattr(gen_config, name):
        return
    value = getattr(gen_config, name)
    if value in _NEUTRAL.get(name, (getattr(defaults, name, None),)):
        return
    new = getattr(defaults, name, None)
    setattr(gen_config, name, new)
    changes.append(f"{name}: {value!r} -> {new!r} ({why})")


def sanitize_generation_config(gen_config: GenerationConfig | None) -> list[str]:
    """Reset values that contradict the config's own decoding mode; return one line per change.

    Greedy configs (``do_sample`` not True) lose their sampling-only values, single-beam configs
    lose beam-only values, a negative ``pad_token_id`` is unset, and ``num_return_sequences > 1``
    without sampling or beams is reset to 1. ``do_sample`` itself is never changed.
    """
    if gen_config is None:
        return []
    defaults = type(gen_config)()
    changes: list[str] = []
    if gen_config.do_sample is not True:
        for name in SAMPLING_ONLY_FIELDS:
            _reset(gen_config, defaults, name, "sampling-only value while do_sample is False", changes)
    num_beams = getattr(gen_config, "num_beams", None)
    single_beam = num_beams is None or num_beams == 1
    if single_beam:
        for name in BEAM_ONLY_FIELDS:
            _reset(gen_config, defaults, name, "beam-search-only value while num_beams is 1", changes)
    pad = getattr(gen_config, "pad_token_id", None)
    if isinstance(pad, int) and pad < 0:
        gen_config.pad_token_id = None
        changes.append(f"pad_token_id: {pad!r} -> None (negative ids are invalid)")
    nrs = getattr(gen_config, "num_return_sequences", None)
    if nrs is not None and nrs > 1 and single_beam and gen_config.do_sample is not True:
        gen_config.num_return_sequences = 1
        changes.append(f"num_return_sequences: {nrs!r} -> 1 (greedy decoding returns one sequence)")
    if getattr(gen_config, "return_dict_in_generate", None) is not True:
        for name in getattr(gen_config, "extra_output_flags", ()):
            if getattr(gen_config, name, None) is True:
                setattr(gen_config, name, False)
                changes.append(f"{name}: True -> False (ignored unless return_dict_in_generate is True)")
    if getattr(gen_config, "use_cache", None) is False:
        for name in ("cache_implementation", "cache_config"):
            if getattr(gen_config, name, None) is not None:
                changes.append(f"{name}: {getattr(gen_config, name)!r} -> None (use_cache is False)")
                setattr(gen_config, name, None)
    return changes
