"""On-disk embedding dataset: ``X.npy`` / ``y.npy`` memmaps plus ``manifest.json``.

Layout of an embedding dataset directory::

    X.npy          (rows, T, d_in) or (rows, d_in)   embeddings of the X model (e.g. LLaVA-1.5-7B)
    y.npy          (rows, T, d_out) or (rows, d_out) embeddings of the y model (e.g. LLaVA-1.5-13B)
    manifest.json  images (row order) with categories, skipped images, dims, dtype, pooling, models

Writing (:class:`EmbeddingWriter`): both arrays are pre-allocated as sparse ``.npy`` memmaps with one
row per candidate image; rows are flushed before the manifest (written atomically) records them, so
the manifest never claims rows that are not on disk and a killed run resumes at the last commit.
When the run completes, the ``.npy`` headers are rewritten to the real row count and the files
truncated, so ``numpy.load`` gives exactly the rows the manifest lists.

Reading (:class:`NpyRows`, :class:`EmbeddingPairs`): rows are fetched with positioned reads from the
same ``.npy`` files instead of through a mapping, so pages read for one batch do not stay in the
process's resident set: training memory stays bounded however large the dataset is.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from llava.utils.atomic import atomic_torch_save, atomic_write_json  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
X_FILE = "X.npy"
Y_FILE = "y.npy"
FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "float32")


def read_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``manifest.json`` of an embedding dataset, with a clear error when it is missing."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: point the path at the --output_dir of scripts/generate_embeddings.py"
        )
    with path.open() as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    return manifest


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """``(shape, dtype, data_offset, header_len_field_size)`` of a C-order ``.npy`` file."""
    with path.open("rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            len_size = 2
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            len_size = 4
        else:
            raise ValueError(f"{path}: unsupported .npy version {version}")
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        return tuple(shape), dtype, f.tell(), len_size


def shrink_npy_rows(path: str | os.PathLike, num_rows: int) -> None:
    """Rewrite the first dimension in a ``.npy`` header to ``num_rows`` and truncate the data to match."""
    path = Path(path)
    shape, dtype, offset, len_size = _read_npy_header(path)
    if num_rows > shape[0]:
        raise ValueError(f"{path}: cannot grow {shape[0]} rows to {num_rows}")
    new_shape = (num_rows, *shape[1:])
    header = f"{{'descr': {npy_format.dtype_to_descr(dtype)!r}, 'fortran_order': False, 'shape': {new_shape!r}, }}"
    room = offset - (6 + 2 + len_size)  # magic + version + header-length field
    if len(header) + 1 > room:
        raise ValueError(f"{path}: new header does not fit the old one")  # cannot happen when shrinking
    encoded = (header + " " * (room - len(header) - 1) + "\n").encode("latin1")
    with path.open("r+b") as f:
        f.seek(6 + 2 + len_size)
        f.write(encoded)
    os.truncate(path, offset + int(np.prod(new_shape, dtype=np.int64)) * dtype.itemsize)


class EmbeddingWriter:
    """Append rows to pre-allocated ``X``/``y`` memmaps and commit them through the manifest."""

    def __init__(self, out_dir: Path, manifest: dict[str, Any], x: np.memmap, y: np.memmap) -> None:
        self.out_dir, self.manifest, self.x, self.y = out_dir, manifest, x, y

    @classmethod
    def create(cls, out_dir: str | os.PathLike, manifest: dict[str, Any], capacity: int,
               x_row_shape: tuple[int, ...], y_row_shape: tuple[int, ...], storage_dtype: str) -> EmbeddingWriter:
        """Start a new dataset in ``out_dir`` with room for ``capacity`` rows (files are sparse)."""
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype {storage_dtype!r} not supported; valid: {', '.join(STORAGE_DTYPES)}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cap = max(capacity, 1)
        x = npy_format.open_memmap(out / X_FILE, mode="w+", dtype=storage_dtype, shape=(cap, *x_row_shape))
        y = npy_format.open_memmap(out / Y_FILE, mode="w+", dtype=storage_dtype, shape=(cap, *y_row_shape))
        manifest = {**manifest, "format_version": FORMAT_VERSION, "status": "in_progress", "num_rows": 0,
                    "next_index": 0, "storage_dtype": storage_dtype,
                    "arrays": {"X": {"file": X_FILE, "row_shape": list(x_row_shape)},
                               "y": {"file": Y_FILE, "row_shape": list(y_row_shape)}},
                    "images": [], "skipped": []}
        writer = cls(out, manifest, x, y)
        writer._write_manifest()
        return writer

    @classmethod
    def resume(cls, out_dir: str | os.PathLike) -> EmbeddingWriter:
        """Reopen an interrupted dataset for appending after its last committed row."""
        out = Path(out_dir)
        manifest = read_manifest(out)
        if manifest["status"] != "in_progress":
            raise ValueError(f"{out} is already {manifest['status']}; nothing to resume")
        x = npy_format.open_memmap(out / X_FILE, mode="r+")
        y = npy_format.open_memmap(out / Y_FILE, mode="r+")
        return cls(out, manifest, x, y)

    @property
    def num_rows(self) -> int:
        """Rows committed so far."""
        return int(self.manifest["num_rows"])

    def append(self, x_rows: np.ndarray, y_rows: np.ndarray, images: list[dict[str, str]],
               skipped: list[dict[str, str]], next_index: int) -> None:
        """Write one batch's rows after the previous ones; recorded on disk at the next :meth:`save_manifest`."""
        n = len(images)
        if x_rows.shape[0] != n or y_rows.shape[0] != n:
            raise ValueError(f"batch has {x_rows.shape[0]} X rows and {y_rows.shape[0]} y rows for {n} images")
        start = self.num_rows
        if start + n > self.x.shape[0]:
            raise ValueError(f"{self.out_dir}: more rows than the {self.x.shape[0]} allocated")
        if n:
            self.x[start:start + n] = x_rows
            self.y[start:start + n] = y_rows
        self.manifest["images"].extend(images)
        self.manifest["skipped"].extend(skipped)
        self.manifest["num_rows"] = start + n
        self.manifest["next_index"] = next_index

    def save_manifest(self) -> None:
        """Flush the arrays, then atomically write the manifest: everything appended so far is committed."""
        self.x.flush()
        self.y.flush()
        self._write_manifest()

    def commit(self, x_rows: np.ndarray, y_rows: np.ndarray, images: list[dict[str, str]],
               skipped: list[dict[str, str]], next_index: int) -> None:
        """:meth:`append` + :meth:`save_manifest`."""
        self.append(x_rows, y_rows, images, skipped, next_index)
        self.save_manifest()

    def finalize(self) -> dict[str, Any]:
        """Shrink both arrays to the committed rows and mark the dataset complete."""
        n = self.num_rows
        self.close()
        for name in (X_FILE, Y_FILE):
            shrink_npy_rows(self.out_dir / name, n)
        categories: dict[str, int] = {}
        for rec in self.manifest["images"]:
            categories[rec["category"]] = categories.get(rec["category"], 0) + 1
        self.manifest["categories"] = dict(sorted(categories.items()))
        self.manifest["status"] = "complete"
        self._write_manifest()
        return self.manifest

    def close(self) -> None:
        """Flush and drop the memmaps."""
        for arr in (self.x, self.y):
            if arr is not None:
                arr.flush()
        self.x = self.y = None  # type: ignore[assignment]

    def _write_manifest(self) -> None:
        atomic_write_json(self.out_dir / MANIFEST_FILE, self.manifest)


class NpyRows:
    """Read whole first-axis rows of a C-order ``.npy`` file with positioned reads (no mapping)."""

    def __init__(self, path: str | os.PathLike, num_rows: int | None = None) -> None:
        self.path = Path(path)
        shape, self.dtype, self.offset, _ = _read_npy_header(self.path)
        self.shape = (shape[0] if num_rows is None else num_rows, *shape[1:])
        if self.shape[0] > shape[0]:
            raise ValueError(f"{self.path} holds {shape[0]} rows, the manifest claims {self.shape[0]}")
        self.row_shape = tuple(shape[1:])
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order; sorted is fastest) as a new ``(len(rows), *row_shape)`` array."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: row index out of range [0, {self.shape[0]})")
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        flat = memoryview(out.reshape(-1).view(np.uint8))
        i = 0
        while i < len(rows):  # one read per run of consecutive rows
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            self._pread_into(flat[i * self.row_bytes:j * self.row_bytes], int(rows[i]))
            i = j
        return out

    def _pread_into(self, buf: memoryview, row: int) -> None:
        pos, done = self.offset + row * self.row_bytes, 0
        while done < len(buf):
            n = os.preadv(self._fd, [buf[done:]], pos + done)
            if n <= 0:
                raise OSError(f"{self.path}: short read at byte {pos + done} (file truncated?)")
            done += n

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


class EmbeddingPairs:
    """A complete embedding dataset opened for reading: ``x``/``y`` row readers + per-image metadata."""

    def __init__(self, dataset_dir: str | os.PathLike) -> None:
        self.dir = Path(dataset_dir)
        self.manifest = read_manifest(self.dir)
        if self.manifest["status"] != "complete":
            raise ValueError(
                f"{self.dir} is an unfinished embedding dataset ({self.manifest['num_rows']} rows so far); "
                "rerun scripts/generate_embeddings.py with the same flags to resume it"
            )
        n = int(self.manifest["num_rows"])
        self.x = NpyRows(self.dir / X_FILE, n)
        self.y = NpyRows(self.dir / Y_FILE, n)
        self.categories = sorted({rec["category"] for rec in self.manifest["images"]})
        index = {c: i for i, c in enumerate(self.categories)}
        self.image_category_ids = np.array([index[r["category"]] for r in self.manifest["images"]], dtype=np.int64)
        self.tokens_per_image = self.x.row_shape[0] if len(self.x.row_shape) == 2 else 1
        self.d_in, self.d_out = self.x.row_shape[-1], self.y.row_shape[-1]
        y_tokens = self.y.row_shape[0] if len(self.y.row_shape) == 2 else 1
        if y_tokens != self.tokens_per_image:
            raise ValueError(f"{self.dir}: X has {self.tokens_per_image} tokens per image, y has {y_tokens}")

    @property
    def num_images(self) -> int:
        """Number of images (rows of the stored arrays)."""
        return int(self.manifest["num_rows"])

    def read_pairs(self, image_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, y, category_ids)`` for ``image_rows``, flattened to one row per token."""
        t = self.tokens_per_image
        xs = self.x.read(image_rows).reshape(-1, self.d_in)
        ys = self.y.read(image_rows).reshape(-1, self.d_out)
        return xs, ys, np.repeat(self.image_category_ids[np.asarray(image_rows, dtype=np.int64)], t)

    def close(self) -> None:
        """Close both readers."""
        self.x.close()
        self.y.close()


def export_pt(dataset_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
              max_bytes: int = 2 << 30) -> Path:
    """Save a complete (small) dataset as one ``.pt`` dict ``{X, y, images, categories}`` (seed's format).

    Refuses datasets over ``max_bytes`` of float32 data: those should stay memmaps.
    """
    pairs = EmbeddingPairs(dataset_dir)
    try:
        n = pairs.num_images
        size = n * (pairs.x.row_bytes // pairs.x.dtype.itemsize + pairs.y.row_bytes // pairs.y.dtype.itemsize) * 4
        if size > max_bytes:
            raise ValueError(f"{dataset_dir}: {size / 2**30:.1f} GiB as float32 is too large for a .pt export; "
                             "use the X.npy / y.npy memmaps")
        import torch

        rows = np.arange(n)
        out = Path(out_path) if out_path is not None else pairs.dir / "embeddings.pt"
        atomic_torch_save({"X": torch.from_numpy(pairs.x.read(rows).astype(np.float32)),
                    "y": torch.from_numpy(pairs.y.read(rows).astype(np.float32)),
                    "images": [r["path"] for r in pairs.manifest["images"]],
                    "categories": [r["category"] for r in pairs.manifest["images"]]}, out)
        return out
    finally:
        pairs.close()
