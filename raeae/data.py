"""Training data: MNIST-format IDX files or a folder/bucket of clean images, as Ray Datasets.

Both sources become the same row schema, so the training loop has one path:
``pixels`` (raw uint8 bytes, row-major H×W×C), ``height``, ``width``, ``channels``. Rows are small
and fixed-typed (no ragged tensors), and Ray Train splits them across workers.
"""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image

from raeae.images import decode
from raeae.storage import StorageConfig, StorageError, explain, list_images, read_bytes, resolve, strip_scheme

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


def rows_from_arrays(images: list[np.ndarray] | np.ndarray) -> pa.Table:
    """uint8 arrays (H×W or H×W×C) -> the training row schema."""
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


def decode_for_training(batch: dict, channels: int, uri: str, storage: StorageConfig) -> dict:
    """Ray Data map: file rows (``path``) -> training rows; undecodable files are dropped with a line."""
    fs, _ = resolve(uri, storage)
    images = []
    for path in batch["path"]:
        try:
            images.append(to_channels(decode(read_bytes(fs, strip_scheme(str(path))))[0], channels))
        except (OSError, ValueError) as exc:
            print(f"raeae: skipping training file {path}: {exc}")
    return rows_from_arrays(images).to_pydict() if images else {
        "pixels": [], "height": [], "width": [], "channels": []}


@dataclass(frozen=True)
class TrainingSource:
    """Where the clean images are: an IDX array split in two, or two lists of image files."""

    uri: str
    description: str
    train_rows: pa.Table | None = None  # IDX
    val_rows: pa.Table | None = None
    train_files: tuple[str, ...] = ()  # image folder
    val_files: tuple[str, ...] = ()

    def datasets(self, channels: int, storage: StorageConfig = StorageConfig()):
        """(train, validation) Ray Datasets in the training row schema; image files are read and
        decoded by Ray Data tasks, in parallel across the cluster."""
        import ray.data

        if self.train_rows is not None:
            return ray.data.from_arrow(self.train_rows), ray.data.from_arrow(self.val_rows)

        def files(paths: tuple[str, ...]):
            ds = ray.data.from_items([{"path": p} for p in paths],
                                     override_num_blocks=max(1, min(len(paths), 64)))
            ds = ds.map_batches(decode_for_training, batch_size=16, batch_format="numpy",
                                fn_kwargs={"channels": channels, "uri": self.uri,
                                           "storage": storage.with_environment()})
            # Decode now, while the CPUs are free: once the Train workers hold every CPU, decode tasks
            # would wait for them forever. The workers hold the decoded images in memory anyway.
            return ds.materialize()

        return files(self.train_files), files(self.val_files)


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
    if not val and len(paths) > 1:  # tiny folders: still hold one image out
        val = [paths[-1]]
    train = [p for p in paths if p not in set(val)]
    if not train:
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
        img = decode(read_bytes(fs, strip_scheme(f["path"])))[0]
        if channels is not None:
            img = to_channels(img, channels)
            img = img[..., 0] if channels == 1 else img
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
