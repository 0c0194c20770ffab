"""Build tiny random LLaVA ingredients locally: CLIP tower, Llama/Qwen2 LLMs and a tokenizer.

Nothing is downloaded. The CLIP model is saved as a full ``CLIPModel`` (``vision_model.*`` and
``text_model.*`` keys) like ``openai/clip-vit-*`` checkpoints, with a matching image-processor
config, so the real loading path is exercised. The tokenizer is a sentencepiece model trained on
a generated corpus and loaded through ``LlamaTokenizer.from_pretrained`` (byte fallback on).

CLI: ``python -m llava.testing.tiny_models --output_dir DIR`` writes ``clip/``, ``llama/``,
``qwen2/`` (and their tokenizers) under ``DIR``.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CORPUS_WORDS = (
    "a an the is are of in on at to and or what which where how many there this that image picture "
    "red blue green yellow purple orange black white gray circle square triangle star shape shapes "
    "top bottom left right center middle above below next row column first second third one two three "
    "four five six seven eight nine zero yes no USER ASSISTANT system assistant human question answer "
    "describe color colour position object objects located count number please short word phrase "
    "chat between curious user artificial intelligence gives helpful detailed polite answers"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyPaths:
    """Where :func:`build_all` put each artifact."""

    clip: str
    llama: str
    qwen2: str


def _write_corpus(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    punct = [".", ",", "?", ":", "!", "", "", ""]
    with path.open("w") as f:
        for _ in range(4000):
            n = rng.randint(3, 16)
            words = [rng.choice(CORPUS_WORDS) for _ in range(n)]
            f.write(" ".join(w + rng.choice(punct) for w in words) + "\n")
        for i in range(200):
            f.write(f"{i} {i % 7},{i % 5} ({i % 3}, {i % 11}) <image>\n")


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 640, seed: int = 0) -> LlamaTokenizer:
    """Train a small BPE sentencepiece model with byte fallback and save a LlamaTokenizer in ``out_dir``."""
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    _write_corpus(corpus, seed)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    corpus.unlink()
    tok = LlamaTokenizer.from_pretrained(str(out), add_bos_token=True)
    tok.save_pretrained(str(out))
    return tok


def build_clip(out_dir: str | os.PathLike, num_layers: int = 4, hidden: int = 32, image_size: int = 32,
               patch_size: int = 8, seed: int = 0) -> str:
    """Save a tiny full ``CLIPModel`` plus a CLIP image-processor config to ``out_dir``."""
    import torch

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
                         num_hidden_layers=2, vocab_size=128, max_position_embeddings=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
                           num_hidden_layers=num_layers, image_size=image_size, patch_size=patch_size),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(str(out_dir))
    proc = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                              crop_size={"height": image_size, "width": image_size})
    proc.save_pretrained(str(out_dir))
    return str(out_dir)


def build_llm(out_dir: str | os.PathLike, family: str = "llama", hidden: int = 64, layers: int = 2,
              seed: int = 0) -> str:
    """Save a tiny random causal LM of ``family`` ('llama' or 'qwen2') with its tokenizer to ``out_dir``."""
    import torch

    tok = build_tokenizer(out_dir, seed=seed)
    if family == "qwen2":
        tok.add_tokens(["<|im_start|>", "<|im_end|>", "<|endoftext|>"], special_tokens=True)
        tok.pad_token = "<|endoftext|>"
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(str(out_dir))
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"unknown tiny LLM family {family!r}; valid: 'llama', 'qwen2'")
    model.save_pretrained(str(out_dir))
    return str(out_dir)


def build_all(out_dir: str | os.PathLike, clip_layers: int = 4) -> TinyPaths:
    """Build the tiny CLIP tower and the tiny Llama and Qwen2 LLMs under ``out_dir``."""
    out = Path(out_dir)
    return TinyPaths(
        clip=build_clip(out / "clip", num_layers=clip_layers),
        llama=build_llm(out / "llama", "llama"),
        qwen2=build_llm(out / "qwen2", "qwen2"),
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--clip_layers", type=int, default=4)
    args = parser.parse_args(argv)
    paths = build_all(args.output_dir, clip_layers=args.clip_layers)
    print(f"clip={paths.clip}\nllama={paths.llama}\nqwen2={paths.qwen2}")


if __name__ == "__main__":
    main()
