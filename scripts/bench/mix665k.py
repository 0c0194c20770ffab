"""A length mixture shaped like ``llava_v1_5_mix665k`` (for ``scripts/bench/packing.py``).

**Composition.** Counts: LLaVA-1.5 paper (arXiv 2310.03744, "Instruction-following data mixture of
LLaVA-1.5", Table 7); LLaVA-Instruct-158K split by its files (conversation_58k, detail_23k,
complex_reasoning_77k on huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K). The paper's
appendix: QA pairs of one image merged into one conversation, ShareGPT truncated at 2048 tokens,
A-OKVQA repeated per choice, 10 annotations per VG image, RefCOCO cut into < 10-turn pieces, one
modality per batch. Turns: from the datasets' questions per image as I recall them (unverified).
Token lengths per turn are ASSUMPTIONS (nothing published found): log-normal medians (sigma),
Llama tokenizer, the question including its response-format prompt:

| source | count | image | turns | question tok | answer tok | tok/word | basis of turns |
|---|---|---|---|---|---|---|---|
| LLaVA conversation | 58K | yes | 2-5 | 15 (0.4) | 70 (0.6) | 1.3 | multi-turn GPT-4 chats |
| LLaVA detail | 23K | yes | 1 | 14 (0.2) | 140 (0.35) | 1.3 | one description |
| LLaVA complex reasoning | 77K | yes | 1 | 25 (0.4) | 160 (0.35) | 1.3 | one question |
| ShareGPT | 40K | no | 1-8 | 60 (1.0) | 280 (0.8) | 1.3 | cut at 2048 tokens |
| VQAv2 | 83K | yes | 3-8 | 20 (0.15) | 2 (0.4) | 1.3 | ~5.4 questions/COCO image |
| GQA | 72K | yes | 6-20 | 22 (0.2) | 2 (0.4) | 1.3 | ~13 questions/image |
| OKVQA | 9K | yes | 1 | 22 (0.2) | 2 (0.4) | 1.3 | ~1 question/image |
| OCRVQA | 80K | yes | 3-7 | 18 (0.2) | 6 (0.6) | 1.3 | ~5 questions/image |
| A-OKVQA | 66K | yes | 1 | 55 (0.2) | 1 (0) | 1.3 | question + 4 choices |
| TextCaps | 22K | yes | 1 | 12 (0) | 18 (0.35) | 1.3 | one caption |
| RefCOCO | 48K | yes | 2-8 | 22 (0.4) | 14 (0.6) | 2.5 | < 10 turns/piece |
| VG | 86K | yes | 10 | 26 (0.3) | 18 (0.5) | 2.5 | 10 annotations/image |

Template (vicuna_v1, assumed): 35 system tokens, 8 per turn on the prompt side, ``</s>`` after each
answer (supervised). Image samples take text + 576 (or 16) LLM positions; samples over 2048 are
DROPPED in both modes (``--skip_bad_samples`` on both paths). The padded sampler gets word counts
like ``LazySupervisedDataset.modality_lengths``: content tokens / tok-per-word, + 1 for ``<image>``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

CAPACITY = 2048
SYSTEM_TOKENS, TURN_PROMPT_TOKENS, TURN_ANSWER_TOKENS = 35, 8, 1


class Source(NamedTuple):
    """One data source: count in the paper (thousands), image or not, modelled turns and tokens per turn."""

    name: str
    count_k: int
    image: bool
    turns: tuple[int, int]
    question: tuple[float, float]
    answer: tuple[float, float]
    tokens_per_word: float


MIXTURE = (
    Source("LLaVA conversation", 58, True, (2, 5), (15, 0.4), (70, 0.6), 1.3),
    Source("LLaVA detail", 23, True, (1, 1), (14, 0.2), (140, 0.35), 1.3),
    Source("LLaVA complex reasoning", 77, True, (1, 1), (25, 0.4), (160, 0.35), 1.3),
    Source("ShareGPT", 40, False, (1, 8), (60, 1.0), (280, 0.8), 1.3),
    Source("VQAv2", 83, True, (3, 8), (20, 0.15), (2, 0.4), 1.3),
    Source("GQA", 72, True, (6, 20), (22, 0.2), (2, 0.4), 1.3),
    Source("OKVQA", 9, True, (1, 1), (22, 0.2), (2, 0.4), 1.3),
    Source("OCRVQA", 80, True, (3, 7), (18, 0.2), (6, 0.6), 1.3),
    Source("A-OKVQA", 66, True, (1, 1), (55, 0.2), (1, 0.0), 1.3),
    Source("TextCaps", 22, True, (1, 1), (12, 0.0), (18, 0.35), 1.3),
    Source("RefCOCO", 48, True, (2, 8), (22, 0.4), (14, 0.6), 2.5),
    Source("VG", 86, True, (10, 10), (26, 0.3), (18, 0.5), 2.5),
)


# ---- the mixture ----

def draw_samples(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` samples stratified over :data:`MIXTURE` (largest remainder), shuffled; each a dict of turns."""
    rng = np.random.default_rng(seed)
    total = sum(s.count_k for s in MIXTURE)
    exact = [n * s.count_k / total for s in MIXTURE]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(MIXTURE)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    out = []
    for src, k in zip(MIXTURE, counts):
        for _ in range(k):
            turns, text = [], SYSTEM_TOKENS
            for _ in range(int(rng.integers(src.turns[0], src.turns[1] + 1))):
                q = max(1, round(src.question[0] * math.exp(src.question[1] * rng.standard_normal())))
                a = max(1, round(src.answer[0] * math.exp(src.answer[1] * rng.standard_normal())))
                room = CAPACITY - text - q - TURN_PROMPT_TOKENS - TURN_ANSWER_TOKENS
                if room < 1:  # ShareGPT: truncated at 2048 tokens (paper)
                    break
                turns.append((q, min(a, room)))
                text += q + TURN_PROMPT_TOKENS + min(a, room) + TURN_ANSWER_TOKENS
            words = round(sum(q + a for q, a in turns) / src.tokens_per_word) + int(src.image)
            out.append(dict(source=src.name, image=src.image, turns=turns, text=text, words=max(words, 1)))
    return [out[i] for i in rng.permutation(len(out))]


def llm_length(sample: dict[str, Any], image_tokens: int) -> int:
    """Positions the sample takes in the LLM sequence after the image splice."""
    return sample["text"] + (image_tokens if sample["image"] else 0)
