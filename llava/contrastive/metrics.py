"""Caption metrics: corpus BLEU-4 and chrF from sacrebleu (a maintained library, multi-reference), and
CIDEr-D implemented here (no maintained pip package computes it without Java tooling; this follows the
coco-caption definition: TF-IDF n-gram vectors n=1..4, IDF from the references, Gaussian length
penalty sigma=6, clipped candidate counts, x10).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n_max: int = 4,
            sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (mean over images) of ``hypotheses[i]`` against ``references[i]`` (several per image)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return 0.0
    refs_tok = [[_tokens(r) for r in refs] for refs in references]
    n_docs = len(hypotheses)
    df: Counter = Counter()
    for refs in refs_tok:
        seen = set()
        for r in refs:
            for n in range(1, n_max + 1):
                seen.update(_ngrams(r, n))
        df.update(seen)
    log_n = math.log(float(n_docs))

    def vec(tokens: list[str]) -> tuple[list[dict], list[float], int]:
        vecs, norms = [], []
        for n in range(1, n_max + 1):
            v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in _ngrams(tokens, n).items()}
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vecs, norms, len(tokens)

    scores = []
    for hyp, refs in zip(hypotheses, refs_tok):
        hv, hn, hl = vec(_tokens(hyp))
        per_n = [0.0] * n_max
        for r in refs:
            rv, rn, rl = vec(r)
            pen = math.exp(-((hl - rl) ** 2) / (2 * sigma ** 2))
            for n in range(n_max):
                dot = sum(min(x, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, x in hv[n].items())
                if hn[n] and rn[n]:
                    per_n[n] += pen * dot / (hn[n] * rn[n])
        scores.append(10.0 * sum(per_n) / n_max / max(1, len(refs)))
    return sum(scores) / len(scores)


def caption_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """``{"bleu4", "chrf", "cider_d"}`` for generated captions against each image's reference captions.

    BLEU/chrF come from sacrebleu when it is installed (``pip install sacrebleu``); without it those two
    keys are absent and ``metrics_note`` says why.
    """
    out: dict[str, float] = {"cider_d": cider_d(hypotheses, references)}
    width = max((len(r) for r in references), default=0)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    try:
        import sacrebleu
    except ImportError:
        out["metrics_note"] = "sacrebleu not installed: pip install sacrebleu for bleu4/chrf"  # type: ignore[assignment]
        return out
    out["bleu4"] = float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)
    out["chrf"] = float(sacrebleu.corpus_chrf(list(hypotheses), streams).score)
    return out
