"""Phase 2: freeze a phase-1 aligner, train a projector that turns its image embedding into k prefix
tokens for a causal LLM (optionally with LoRA), and report caption metrics with greedy and sampled samples.

    python scripts/prefix_caption.py --aligner_dir runs/align --llm Qwen/Qwen2.5-1.5B-Instruct \
        --data train.json --eval_data val.json --num_prefix_tokens 8 --lora --output_dir runs/caption

``--synthetic N`` uses N generated coloured-shape images (plus 18 held-out ones). Writes the model
(``projector.pt``, ``llm_config.json``, ``aligner/``, ``lora/`` when ``--lora``; load with
``MultimodalLLM.load``), ``history.json``, ``captions.json`` (greedy and sampled per image) and
``metrics.json`` (BLEU-4 / chrF via sacrebleu, CIDEr-D) to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llava.contrastive import (  # noqa: E402
    ImageTextDataset,
    LLMConfig,
    MultimodalLLM,
    VisionTextAligner,
    cache_features,
    create_dataloader,
    evaluate_captions,
    load_records,
    set_seed,
    synthetic_shapes,
    train_captioning,
)
from llava.contrastive.config import RemoteCodeRefusedError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aligner_dir", required=True, help="--output_dir of scripts/contrastive_align.py")
    p.add_argument("--llm", required=True, help="causal LM dir or hub name (Qwen2 family tested)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSON/JSONL of {image, captions|caption} or LLaVA-format records")
    src.add_argument("--synthetic", type=int, help="train on N generated coloured-shape images")
    p.add_argument("--image_folder", default=None)
    p.add_argument("--eval_data", default=None, help="held-out captions for the metrics (default: training set)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_prefix_tokens", type=int, default=4)
    p.add_argument("--aligned_dim", type=int, default=None, help="use this Matryoshka prefix of the embedding")
    p.add_argument("--prompt", default="Describe this image:")
    p.add_argument("--no_chat_template", action="store_true")
    p.add_argument("--lora", action="store_true", help="add LoRA adapters to the LLM")
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--lora_alpha", type=int, default=16)
    p.add_argument("--lora_target_modules", default="q_proj,v_proj")
    p.add_argument("--lora_lr", type=float, default=2e-4)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="projector learning rate")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8, help="for the sampled captions")
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--trust_remote_code", type=_true_false, default=False,
                   help="True: run the Python of the LLM / aligner encoders named (never turned on by a config file)")
    return p


def _true_false(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def main(argv: list[str] | None = None) -> dict:
    """Run phase 2; returns the metrics."""
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    cfg = LLMConfig(model_name=args.llm, num_prefix_tokens=args.num_prefix_tokens, aligned_dim=args.aligned_dim,
                    prompt=args.prompt, use_chat_template=not args.no_chat_template, use_lora=args.lora,
                    lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                    lora_target_modules=tuple(m for m in args.lora_target_modules.split(",") if m),
                    lora_lr=args.lora_lr, lr=args.lr, max_new_tokens=args.max_new_tokens, device=args.device,
                    seed=args.seed, trust_remote_code=args.trust_remote_code)
    try:
        aligner = VisionTextAligner.load(args.aligner_dir, device=cfg.device, trust_remote_code=args.trust_remote_code)
    except RemoteCodeRefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    model = MultimodalLLM(aligner, cfg)
    if args.synthetic:
        train_recs = synthetic_shapes(args.synthetic, image_size=args.image_size, seed=args.seed)
        eval_recs = synthetic_shapes(18, image_size=args.image_size, seed=args.seed + 1)
    else:
        train_recs = load_records(args.data, args.image_folder)
        eval_recs = train_recs
    if args.eval_data:
        eval_recs = load_records(args.eval_data, args.image_folder)
    train_ds = ImageTextDataset(train_recs, captions_per_image=1, seed=args.seed)
    eval_ds = ImageTextDataset(eval_recs, captions_per_image=None)
    for ds in (train_ds, eval_ds):
        ds.features = cache_features(aligner.raw_image_features, aligner.raw_text_features, ds)
    hist = train_captioning(model, create_dataloader(train_ds, batch_size=args.batch_size, seed=args.seed),
                            num_epochs=args.num_epochs)
    model.save(out)
    (out / "history.json").write_text(json.dumps(hist, indent=1))
    greedy = evaluate_captions(model, eval_ds)
    sampled = model.generate(image_features=eval_ds.features["image"], do_sample=True,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    captions = [dict(s, sampled=g) for s, g in zip(greedy.pop("samples"), sampled)]
    (out / "captions.json").write_text(json.dumps(captions, indent=1))
    (out / "metrics.json").write_text(json.dumps(greedy, indent=1))
    print(f"caption loss {hist['epoch_loss'][0]:.4f} -> {hist['epoch_loss'][-1]:.4f} in {hist['seconds']:.1f}s")
    print("metrics (greedy):", json.dumps(greedy))
    for c in captions[:3]:
        print(f"  {c['image_id']}: greedy={c['generated']!r} sampled={c['sampled']!r} ref={c['references'][0]!r}")
    return greedy


if __name__ == "__main__":
    main()
