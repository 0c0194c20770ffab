"""GPU check part ``precision``: bf16 vs fp32 forward of the tiny LLaVA, vanilla and every registered add-on.

For each attention implementation (sdpa, eager) and each case (vanilla, then one per add-on of the
registry with the flags that switch it on), the same seeded model runs in fp32 and in bf16 on the same
inputs: the max abs logit difference, and whether the greedy next token of each row agrees. A row whose
fp32 top-1/top-2 margin is wider than twice the max difference is *decided*: bf16 must agree there.
Rows -> ``OUT/precision.md`` and ``OUT/precision.json``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from gpu_common import parse_part_args, part_parser, tiny_paths, write_result

ATTENTIONS = ("sdpa", "eager")
# Flags beyond the switch that the tiny geometry (4x4 patches, 4 tower layers) needs; other add-ons: switch=True.
ADDON_FLAGS: dict[str, dict[str, Any]] = {
    "multilayer": dict(use_multilayer_features=True, mm_multilayer_select="1,2,3"),
    "compression": dict(compression_after_projection=True, final_spatial_size=4),
    "interleave": dict(interleave=True, interleave_sparsity=4),
    "cosine": dict(mm_cosine_loss="self_distill"),
}
MAX_DIFF = 0.05  # bf16 vs fp32 max abs logit difference allowed (tiny model: logits ~0.6, CPU diffs ~0.01)


def cases() -> dict[str, dict[str, Any]]:
    """``vanilla`` plus one case per registered built-in add-on."""
    from llava.model.addons.registry import BUILTIN_ADDONS

    out: dict[str, dict[str, Any]] = {"vanilla": {}}
    for addon in BUILTIN_ADDONS:
        out[addon.name] = ADDON_FLAGS.get(addon.name, {addon.switch: True})
    return out


def inputs(device: str) -> dict[str, torch.Tensor]:
    """Two rows with one image each (the second right-padded), seeded."""
    from llava.constants import IMAGE_TOKEN_INDEX

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (2, 12), generator=gen)
    ids[0, 1], ids[1, 3] = IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    images = torch.randn(2, 3, 32, 32, generator=gen)
    return dict(input_ids=ids.to(device), attention_mask=mask.to(device), images=images.to(device))


def last_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """fp32 logits of each row's last real position (the next-token distribution)."""
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    images=batch["images"].to(dtype))
    logits = out.logits.float()
    # the model expands the image token into patches: the last real position counts from the padded end
    pad = (batch["attention_mask"] == 0).sum(1)
    index = logits.shape[1] - 1 - pad
    return logits[torch.arange(logits.shape[0]), index]


def compare(case: str, flags: dict[str, Any], attn: str, paths: dict[str, str], tokenizer: Any,
            device: str) -> dict[str, Any]:
    """One row of the table."""
    from llava.testing.tiny_llava import build_tiny_llava

    model = build_tiny_llava(paths["llama"], paths["clip"], seed=0, attn_implementation=attn, **flags)
    model.initialize_vision_tokenizer(SimpleNamespace(), tokenizer)
    model.to(device)
    batch = inputs(device)
    full = last_logits(model, batch, torch.float32)
    half = last_logits(copy.deepcopy(model).to(torch.bfloat16), batch, torch.bfloat16)
    diff = float((full - half).abs().max())
    top2 = full.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    equal = full.argmax(-1) == half.argmax(-1)
    decided = margin > 2 * diff
    flipped_decided = int((decided & ~equal).sum())
    ok = math.isfinite(diff) and bool(torch.isfinite(half).all()) and diff <= MAX_DIFF and flipped_decided == 0
    return dict(case=case, attn=attn, max_abs_diff=diff, logit_scale=float(full.abs().max()),
                greedy_equal=int(equal.sum()), rows=int(equal.numel()), decided=int(decided.sum()),
                flipped_decided=flipped_decided, ok=ok)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as markdown."""
    lines = ["| case | attention | max abs logit diff | max abs logit | greedy equal | decided rows | ok |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['attn']} | {r['max_abs_diff']:.3g} | {r['logit_scale']:.3g} | "
                     f"{r['greedy_equal']}/{r['rows']} | {r['decided']} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    a = parse_part_args(part_parser(__doc__.splitlines()[0]))
    from transformers import AutoTokenizer

    paths = tiny_paths(a.work)
    tokenizer = AutoTokenizer.from_pretrained(paths["llama"])
    rows, errors = [], []
    for attn in ATTENTIONS:
        for case, flags in cases().items():
            try:
                rows.append(compare(case, flags, attn, paths, tokenizer, a.device))
            except (RuntimeError, ValueError, TypeError) as err:  # one broken case must not hide the others
                errors.append(f"{case}/{attn}: {type(err).__name__}: {err}")
    text = f"bf16 vs fp32, tiny LLaVA on {a.device} (MAX_DIFF {MAX_DIFF})\n\n{table(rows)}"
    text += "".join(f"\nerror: {e}" for e in errors)
    Path(a.out, "precision.md").write_text(text)
    Path(a.out, "precision.json").write_text(json.dumps(dict(rows=rows, errors=errors), indent=1))
    print(text)
    bad = [f"{r['case']}/{r['attn']}" for r in rows if not r["ok"]] + [e.split(":")[0] for e in errors]
    numbers = dict(cases=len(rows), max_abs_diff=max((r["max_abs_diff"] for r in rows), default=math.nan),
                   greedy_equal=f"{sum(r['greedy_equal'] for r in rows)}/{sum(r['rows'] for r in rows)}",
                   failed=len(bad))
    write_result(a.out, "precision", bool(rows) and not bad, numbers, "failed: " + ", ".join(bad) if bad else "")


if __name__ == "__main__":
    main()
