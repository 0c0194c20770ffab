"""Step 1: precompute paired post-projector embeddings of two LLaVA models over an image folder.

Each batch of images is decoded once, preprocessed once with the X model's processor, and the same
pixel tensor goes through both models (X = the smaller model, e.g. 7B; y = the larger, e.g. 13B).
Rows go to memmaps as each batch finishes and are committed through the manifest at most every
``commit_every_s`` seconds (0: every batch), so memory holds one batch, the manifest is not rewritten
per batch on huge sets, and a rerun with the same flags continues after the last commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .images import fingerprint, list_images, load_batch
from .models import EmbeddingModel, load_embedding_model, preprocess_mismatches, probe_shape
from .store import MANIFEST_FILE, STORAGE_DTYPES, X_FILE, Y_FILE, EmbeddingWriter, export_pt, read_manifest

logger = logging.getLogger(__name__)

POOLINGS = ("none", "mean")


@dataclass
class GenerateConfig:
    """Flags of ``scripts/generate_embeddings.py`` (see its ``--help``)."""

    model_7b: str
    model_13b: str
    images_dir: str
    output_dir: str
    model_base_7b: str | None = None
    model_base_13b: str | None = None
    batch_size: int = 8
    pooling: str = "none"
    dtype: str = "auto"
    device: str = "auto"
    storage_dtype: str = "float16"
    num_workers: int = 2
    overwrite: bool = False
    allow_preprocess_mismatch: bool = False
    export_pt: bool = False
    commit_every_s: float = 10.0
    stop_after_batches: int | None = None
    progress: bool = True


def _check_config(cfg: GenerateConfig) -> None:
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"--pooling {cfg.pooling!r} not supported; valid: {', '.join(POOLINGS)}")
    if cfg.storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"--storage_dtype {cfg.storage_dtype!r} not supported; valid: {', '.join(STORAGE_DTYPES)}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.commit_every_s < 0:
        raise ValueError(f"--commit_every_s must be >= 0, got {cfg.commit_every_s}")


def _run_identity(cfg: GenerateConfig, candidates_sha: str, num_candidates: int) -> dict[str, Any]:
    """The settings a resumed run must share with the run that started the dataset."""
    return {"images_dir": str(Path(cfg.images_dir).resolve()), "candidates": {"count": num_candidates,
            "sha256": candidates_sha}, "pooling": cfg.pooling, "storage_dtype": cfg.storage_dtype,
            "model_ids": {"X": [cfg.model_7b, cfg.model_base_7b], "y": [cfg.model_13b, cfg.model_base_13b]}}


def _resume_conflicts(manifest: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    return [f"{k}: on disk {manifest.get(k)!r}, now {v!r}" for k, v in identity.items() if manifest.get(k) != v]


def _pool(emb: torch.Tensor, pooling: str) -> torch.Tensor:
    return emb.mean(dim=1) if pooling == "mean" else emb


def _to_storage(emb: torch.Tensor, dtype: str, which: str) -> np.ndarray:
    arr = emb.numpy().astype(dtype)
    if not np.isfinite(arr).all():
        raise ValueError(
            f"non-finite values in the {which} embeddings stored as {dtype}; if the model's outputs are finite, "
            "they exceed float16 range: rerun with --storage_dtype float32 (and --overwrite)"
        )
    return arr


def _load_models(cfg: GenerateConfig) -> tuple[EmbeddingModel, EmbeddingModel]:
    x = load_embedding_model(cfg.model_7b, cfg.model_base_7b, cfg.device, cfg.dtype, flag="--model_7b")
    y = load_embedding_model(cfg.model_13b, cfg.model_base_13b, cfg.device, cfg.dtype, flag="--model_13b")
    return x, y


def generate_embeddings(cfg: GenerateConfig,
                        models: tuple[EmbeddingModel, EmbeddingModel] | None = None) -> dict[str, Any]:
    """Write (or resume) the embedding dataset in ``cfg.output_dir``; returns its manifest.

    ``models`` skips loading (tests, notebooks). ``cfg.stop_after_batches`` stops after that many
    batches in this call, leaving a resumable ``in_progress`` dataset (how tests simulate a crash).
    """
    _check_config(cfg)
    out = Path(cfg.output_dir)
    records = list_images(cfg.images_dir)
    identity = _run_identity(cfg, fingerprint(records), len(records))
    complete = _previous_dataset(cfg, out, identity)
    if complete is not None:
        return complete
    x_model, y_model = models if models is not None else _load_models(cfg)
    mismatches = preprocess_mismatches(x_model, y_model)
    if mismatches and not cfg.allow_preprocess_mismatch:
        raise ValueError(
            "the two models preprocess images differently (" + "; ".join(mismatches) + "). Both always get the "
            "same pixels (the --model_7b processor's); pass --allow_preprocess_mismatch to accept that"
        )
    x_row, y_row = _row_shapes(cfg, x_model, y_model)
    writer = _open_writer(cfg, out, identity, (x_model, y_model), mismatches, len(records), (x_row, y_row))
    if not _embed_records(cfg, writer, records, (x_model, y_model), (x_row, y_row)):
        return writer.manifest
    manifest = writer.finalize()
    skipped = manifest["skipped"]
    logger.info("wrote %d rows to %s; %d unreadable images skipped%s", manifest["num_rows"], out, len(skipped),
                "" if not skipped else " (listed under 'skipped' in manifest.json)")
    if cfg.export_pt:
        export_pt(out)
    return manifest


def _previous_dataset(cfg: GenerateConfig, out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an already complete dataset with these settings (None: write or resume one); a dataset
    made with other settings, or arrays without a manifest, raise unless ``--overwrite`` (which deletes them)."""
    manifest_path = out / MANIFEST_FILE
    if cfg.overwrite:
        for name in (MANIFEST_FILE, X_FILE, Y_FILE, "embeddings.pt"):
            (out / name).unlink(missing_ok=True)
    elif manifest_path.exists():
        manifest = read_manifest(out)
        conflicts = _resume_conflicts(manifest, identity)
        if conflicts:
            raise ValueError(f"--output_dir {str(out)!r} holds a dataset made with other settings ("
                             + "; ".join(conflicts) + "): pass --overwrite or use a new --output_dir")
        if manifest["status"] == "complete":
            logger.info("%s is already complete (%d rows); nothing to do", out, manifest["num_rows"])
            if cfg.export_pt and not (out / "embeddings.pt").exists():
                export_pt(out)
            return manifest
    elif (out / X_FILE).exists() or (out / Y_FILE).exists():
        raise ValueError(f"--output_dir {str(out)!r} has {X_FILE}/{Y_FILE} but no {MANIFEST_FILE}; "
                         "pass --overwrite or use a new --output_dir")
    return None


def _row_shapes(cfg: GenerateConfig, x_model: EmbeddingModel,
                y_model: EmbeddingModel) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape of one stored row of X and of y (``(tokens, width)``, or ``(width,)`` when pooled)."""
    probe = x_model.preprocess([_blank_image(x_model)])
    (tx, dx), (ty, dy) = probe_shape(x_model, probe), probe_shape(y_model, probe)
    if cfg.pooling == "none" and tx != ty:
        raise ValueError(f"--pooling none needs the same token count from both models; X gives {tx}, y gives {ty}."
                         " Use --pooling mean")
    return ((tx, dx), (ty, dy)) if cfg.pooling == "none" else ((dx,), (dy,))


def _open_writer(cfg: GenerateConfig, out: Path, identity: dict[str, Any],
                 models: tuple[EmbeddingModel, EmbeddingModel], mismatches: list[str], n_records: int,
                 rows: tuple[tuple[int, ...], tuple[int, ...]]) -> EmbeddingWriter:
    """Resume the in-progress dataset in ``out`` (its row shapes must match) or create a new one."""
    if (out / MANIFEST_FILE).exists():
        writer = EmbeddingWriter.resume(out)
        arrays = writer.manifest["arrays"]
        stored = (tuple(arrays["X"]["row_shape"]), tuple(arrays["y"]["row_shape"]))
        if stored != rows:
            raise ValueError(f"{out}: stored row shapes {stored} differ from the models' {rows}; "
                             "pass --overwrite or use a new --output_dir")
        logger.info("resuming %s at image %d/%d (%d rows)", out, writer.manifest["next_index"], n_records,
                    writer.num_rows)
        return writer
    x_model, y_model = models
    base = {**identity, "models": {"X": x_model.describe(), "y": y_model.describe()},
            "preprocessing": {"source": "X", "spec": x_model.preprocess_spec(), "mismatches": mismatches},
            "run_config": {k: v for k, v in asdict(cfg).items() if k not in ("stop_after_batches", "progress")},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return EmbeddingWriter.create(out, base, n_records, *rows, cfg.storage_dtype)


def _embed_records(cfg: GenerateConfig, writer: EmbeddingWriter, records: list[Any],
                   models: tuple[EmbeddingModel, EmbeddingModel],
                   rows: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    """Embed and append every record from the writer's ``next_index`` on; False when stopped early by
    ``cfg.stop_after_batches`` (the dataset is left resumable)."""
    (x_model, y_model), (x_row, y_row) = models, rows
    start = int(writer.manifest["next_index"])
    bar = tqdm(total=len(records), initial=start, unit="img", desc="embeddings", disable=not cfg.progress)
    batches, last_commit = 0, time.monotonic()
    for i in range(start, len(records), cfg.batch_size):
        if cfg.stop_after_batches is not None and batches >= cfg.stop_after_batches:
            bar.close()
            writer.save_manifest()
            writer.close()
            logger.info("stopped after %d batches; rerun with the same flags to resume", batches)
            return False
        chunk = records[i:i + cfg.batch_size]
        loaded, failed = load_batch(cfg.images_dir, chunk, cfg.num_workers)
        for f in failed:
            logger.warning("skipping unreadable image %s: %s", f["path"], f["error"])
        xs = np.empty((0, *x_row), cfg.storage_dtype)
        ys = np.empty((0, *y_row), cfg.storage_dtype)
        if loaded:
            pixels = x_model.preprocess([img for _, img in loaded])
            xs = _to_storage(_pool(x_model.embed(pixels), cfg.pooling), cfg.storage_dtype, "X")
            ys = _to_storage(_pool(y_model.embed(pixels), cfg.pooling), cfg.storage_dtype, "y")
        writer.append(xs, ys, [rec.as_dict() for rec, _ in loaded], failed, i + len(chunk))
        if time.monotonic() - last_commit >= cfg.commit_every_s:
            writer.save_manifest()
            last_commit = time.monotonic()
        bar.update(len(chunk))
        batches += 1
    bar.close()
    return True


def _blank_image(model: EmbeddingModel) -> Any:
    from PIL import Image

    from llava.mm_utils import crop_size_of

    h, w = crop_size_of(model.image_processor)
    return Image.new("RGB", (w, h), (128, 128, 128))

