"""Tiny random text encoder for tests and demos: a small BertModel with a WordPiece tokenizer built
locally from a word list, wrapped as a sentence-transformers model (Transformer + mean Pooling) and
saved to a directory that ``SentenceTransformer(path)`` loads back. Nothing is downloaded.

    python -m llava.contrastive.tiny --output_dir DIR
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from llava.contrastive.data import SYNTH_COLOURS, SYNTH_SHAPES, SYNTH_TEMPLATES

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def default_words() -> list[str]:
    """Every word of the synthetic captions plus a few fillers."""
    words = set(SYNTH_COLOURS) | set(SYNTH_SHAPES) | {"describe", "this", "image", "photo", "of", "dog", "cat"}
    for t in SYNTH_TEMPLATES:
        words.update(w for w in t.replace("{c}", "").replace("{s}", "").split() if w)
    return sorted(words)


def build_tiny_sentence_transformer(out_dir: str | os.PathLike, hidden: int = 32, layers: int = 2,
                                    words: Sequence[str] | None = None, seed: int = 0) -> str:
    """Save a tiny random BERT sentence-transformers model (mean pooling, ``hidden``-dim output) to ``out_dir``."""
    import torch
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out_dir)
    tmp = tempfile.TemporaryDirectory()
    raw = Path(tmp.name)
    vocab = list(SPECIAL) + sorted(set(words or default_words())) + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = list(dict.fromkeys(vocab))
    # transformers 5 takes the vocabulary as a dict (a ``vocab_file=`` kwarg is ignored -> all [UNK]).
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    if tok.tokenize("red")[0] != "red":
        raise RuntimeError("tiny WordPiece tokenizer maps known words to [UNK]; the tokenizers API changed")
    tok.save_pretrained(str(raw))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(raw))
    word = Transformer(str(raw), max_seq_length=32)
    pool = Pooling(hidden, pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(out))
    tmp.cleanup()
    return str(out)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--hidden", type=int, default=32)
    args = p.parse_args(argv)
    print(build_tiny_sentence_transformer(args.output_dir, hidden=args.hidden))


if __name__ == "__main__":
    main()
