"""Training data: MNIST-format IDX files or a folder/bucket of clean images.

A :class:`TrainingSource` says where the images are; each Ray Train worker then reads its own share
(:meth:`TrainingSource.train_share`), and rank 0 the validation images. IDX arrays travel as rows of
one schema: ``pixels`` (raw uint8 bytes, row-major H×W×C), ``height``, ``width``, ``channels``.
"""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from raeae.images import decode
from raeae.storage import StorageConfig, StorageError, explain, list_images, read_bytes, resolve, strip_scheme

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

IDX_UBYTE_IMAGES = 0x00000803  # IDX magic: unsigned bytes, 3 dimensions (N, rows, cols)


def parse_idx(data: bytes) -> np.ndarray:
    """An IDX image file (gzipped or not) -> uint8 array ``(N, rows, cols)``."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 16:
        raise ValueError("IDX file too short")
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    if magic != IDX_UBYTE_IMAGES:
        raise ValueError(f"not an IDX ubyte image file (magic {magic:#x})")
    body = np.frombuffer(data, dtype=np.uint8, offset=16)
    if body.size != n * rows * cols:
        raise ValueError(f"IDX file truncated: {body.size} bytes of pixels for {n}x{rows}x{cols}")
    return body.reshape(int(n), int(rows), int(cols))


def find_idx(uri: str, split: str, storage: StorageConfig = StorageConfig()) -> str | None:
    """Path of the ``train`` or ``t10k`` images IDX file under ``uri``, or None if it holds none."""
    import pyarrow.fs as pafs  # here, not at the top: see raeae.storage

    fs, path = resolve(uri, storage)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            name = posixpath.basename(path)
            return path if "idx3-ubyte" in name or "idx3_ubyte" in name else None
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{uri}: no such file or folder")
        names = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=False))]
    except OSError as exc:
        raise StorageError(explain(exc, uri)) from None
    prefix = "train" if split == "train" else "t10k"
    for p in sorted(names):
        base = posixpath.basename(p)
        if base.startswith(prefix) and ("idx3-ubyte" in base or "idx3_ubyte" in base):
            return p
    return None


def load_idx(uri: str, split: str = "train", storage: StorageConfig = StorageConfig()) -> np.ndarray:
    fs, _ = resolve(uri, storage)
    path = find_idx(uri, split, storage)
    if path is None:
        raise StorageError(f"{uri}: no {split} IDX image file")
    return parse_idx(read_bytes(fs, path))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 image -> H×W×channels: alpha dropped, colour to ITU-R 601 luma or gray replicated."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] in (2, 4):
        image = image[..., :-1]
    if channels == 1 and image.shape[2] == 3:
        return np.asarray(Image.fromarray(image).convert("L"))[..., None]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image


def read_image(fs: pafs.FileSystem, path: str, channels: int | None = None) -> np.ndarray:
    """Read and decode one image file (``path`` with or without its scheme) into a uint8 array,
    converted to ``channels`` (1 or 3) unless None. Raises ``OSError``/``ValueError`` on a file that
    cannot be read or decoded: each caller keeps its own policy (training skips it, evaluation stops)."""
    image = decode(read_bytes(fs, strip_scheme(path)))[0]
    return image if channels is None else to_channels(image, channels)


def rows_from_arrays(images: list[np.ndarray] | np.ndarray) -> pa.Table:
    """uint8 arrays (H×W or H×W×C) -> the training row schema."""
    import pyarrow as pa  # here, not at the top: see raeae.storage

    arrs = [a if a.ndim == 3 else a[..., None] for a in images]
    return pa.table({
        "pixels": pa.array([np.ascontiguousarray(a).tobytes() for a in arrs], type=pa.binary()),
        "height": pa.array([a.shape[0] for a in arrs], type=pa.int32()),
        "width": pa.array([a.shape[1] for a in arrs], type=pa.int32()),
        "channels": pa.array([a.shape[2] for a in arrs], type=pa.int32()),
    })


def arrays_from_rows(batch: dict) -> list[np.ndarray]:
    """A batch in the training row schema (numpy format) -> list of uint8 ``(H, W, C)`` arrays."""
    return [np.frombuffer(p, dtype=np.uint8).reshape(int(h), int(w), int(c))
            for p, h, w, c in zip(batch["pixels"], batch["height"], batch["width"], batch["channels"])]


def is_validation(key: str, fraction: float, seed: int) -> bool:
    """Stable held-out split: the same file is held out in every run with this seed."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


# Files read at once by one worker: reading from object storage is mostly waiting (a request's latency),
# and the decode releases the GIL for most of its time.
READ_THREADS = 8


def read_training_files(paths: Sequence[str], channels: int, uri: str, storage: StorageConfig) -> list[np.ndarray]:
    """Read and decode image files into uint8 H×W×``channels`` arrays, in order; a file that cannot be
    read or decoded is skipped with a line (one bad file does not stop a training run)."""
    fs, _ = resolve(uri, storage)

    def one(path: str) -> np.ndarray | None:
        try:
            return read_image(fs, path, channels)
        except (OSError, ValueError) as exc:
            print(f"raeae: skipping training file {path}: {exc}")
            return None

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return [image for image in pool.map(one, paths) if image is not None]


@dataclass(frozen=True)
class TrainingSource:
    """Where the clean images are: an IDX array split in two, or two lists of image files."""

    uri: str
    description: str
    train_rows: pa.Table | None = None  # IDX
    val_rows: pa.Table | None = None
    train_files: tuple[str, ...] = ()  # image folder
    val_files: tuple[str, ...] = ()

    def train_share(self, rank: int, world: int, channels: int,
                    storage: StorageConfig = StorageConfig()) -> list[np.ndarray]:
        """Worker ``rank`` of ``world``'s training images (every ``world``-th row or file from its own
        rank on), read by the worker itself, which holds them in memory for the whole run anyway.
        Decoding them with Ray Data in the driver and handing each worker a Ray Train dataset shard
        cost more than reading them: on 2 CPUs, for a 12-image folder, 3.5 s of decoding in the driver
        (Ray Data's executor and its helper actors starting) and 6.4 s in the worker (a split
        coordinator actor starting, then two shards streamed); a 1-epoch `raeae train` went from
        40.7-45.6 s to 36.0-37.1 s (two runs each, interleaved)."""
        if self.train_rows is not None:
            return arrays_from_rows(self.train_rows.take(list(range(rank, self.train_rows.num_rows, world)))
                                    .to_pydict())
        return read_training_files(self.train_files[rank::world], channels, self.uri, storage)

    def validation(self, channels: int, storage: StorageConfig = StorageConfig()) -> list[np.ndarray]:
        """The held-out images (rank 0 validates)."""
        if self.val_rows is not None:
            return arrays_from_rows(self.val_rows.to_pydict())
        return read_training_files(self.val_files, channels, self.uri, storage)

    @property
    def train_count(self) -> int:
        return self.train_rows.num_rows if self.train_rows is not None else len(self.train_files)


def load_source(uri: str, channels: int, val_fraction: float, seed: int,
                storage: StorageConfig = StorageConfig(), max_images: int = 0) -> TrainingSource:
    """Find the training data at ``uri`` (IDX folder/file, or image folder/prefix) and split off a
    stable validation part. Raises :class:`StorageError` with one line when there is nothing usable."""
    if find_idx(uri, "train", storage) is not None:
        arr = load_idx(uri, "train", storage)
        if 0 < max_images < len(arr):
            arr = arr[np.random.default_rng(seed).permutation(len(arr))[:max_images]]
        order = np.random.default_rng(seed).permutation(len(arr))
        n_val = max(1, int(round(len(arr) * val_fraction)))
        val, train = arr[order[:n_val]], arr[order[n_val:]]
        if channels == 3:
            train, val = (np.repeat(a[..., None], 3, axis=3) for a in (train, val))
        return TrainingSource(uri, f"IDX {uri}: {len(train)} train / {len(val)} validation images",
                              train_rows=rows_from_arrays(train), val_rows=rows_from_arrays(val))
    paths = [f["path"] for f in list_images(uri, storage)]
    if not paths:
        raise StorageError(f"{uri}: no images found (png, jpg, tif, bmp, webp, ...) and no IDX file")
    if 0 < max_images < len(paths):  # a seeded sample, e.g. of a large archive to learn from
        keep = set(np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False).tolist())
        paths = [p for i, p in enumerate(paths) if i in keep]
    val = [p for p in paths if is_validation(p, val_fraction, seed)]
    if len(paths) > 1:  # a few files can hash all or none into validation: hold one out, keep one to train on
        val = val[:len(paths) - 1] or [paths[-1]]
    train = [p for p in paths if p not in set(val)]
    if not train:  # a single image trains and validates
        train = val
    return TrainingSource(uri, f"images {uri}: {len(train)} train / {len(val)} validation files",
                          train_files=tuple(train), val_files=tuple(val))


def load_images(uri: str, channels: int | None = None, storage: StorageConfig = StorageConfig(),
                split: str = "test", limit: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 image) pairs from an image folder or an IDX folder's ``split`` (no Ray): for
    evaluation and benchmarks. ``channels`` converts (1 gray, 3 RGB); None keeps each file's own."""
    if find_idx(uri, split, storage) is not None:
        arr = load_idx(uri, split, storage)[: limit or None]
        return [(f"{split}-{i:05d}", a if channels != 3 else np.repeat(a[..., None], 3, axis=2))
                for i, a in enumerate(arr)]
    fs, _ = resolve(uri, storage)
    out = []
    for f in list_images(uri, storage)[: limit or None]:
        img = read_image(fs, f["path"], channels)
        if channels == 1:
            img = img[..., 0]
        out.append((posixpath.basename(f["path"]), img))
    return out


# --- embedded sample photographs -------------------------------------------------------------------

# Real photographs that ship inside scikit-image's wheel (no download). The first group trains the
# demo model; the second is held out and becomes the demo's noisy archive.
SAMPLE_TRAIN = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png",
                "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "page.png",
                "rocket.jpg")
SAMPLE_HELD_OUT = ("coins.png", "cell.png", "ihc.png", "microaneurysms.png", "retina.jpg")


def sample_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def copy_samples(dest: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Copy embedded sample photographs into ``dest``; returns the new paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        target = dest / name
        shutil.copyfile(sample_dir() / name, target)
        out.append(target)
    return out
