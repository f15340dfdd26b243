"""Self-describing checkpoints: one ``model.pt`` holding the model config, weights, training config
and metrics, all plain types and tensors so it loads with ``torch.load(weights_only=True)`` — a
checkpoint can never run code. A checkpoint is a folder (Ray Train's unit) or the file itself, on any
filesystem :mod:`raeae.storage` reaches.

torch is imported only by the functions that build or load tensors: a restore's driver checks its
checkpoints with :func:`read_header`, which reads everything but the weights without torch (the
import is ~1.5 s of the time to the first row; only the model actors need it).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raeae.settings import default_stride
from raeae.storage import StorageConfig, StorageError, explain, read_bytes, resolve

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import torch

    from raeae.model import DenseAutoencoder, ModelConfig

CHECKPOINT_FILE = "model.pt"
FORMAT_VERSION = 1
BUILTIN = "builtin:"  # models that ship inside the package: builtin:gray, builtin:color (builtin:auto picks per image)
AUTO = BUILTIN + "auto"  # per image: the colour model for colour images, the gray one for gray images
BUILTIN_DIR = Path(__file__).resolve().parent / "models"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not a raeae checkpoint; the message says which."""


def checkpoint_state(model: "torch.nn.Module", model_config: "ModelConfig", **extra) -> dict:
    """The dict saved to ``model.pt``; ``extra`` holds training config, noise, metrics, optimizer…"""
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    state = {"format": "raeae", "format_version": FORMAT_VERSION, "model_config": model_config.to_dict(),
             "model": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
    state.update(extra)
    return state


def save(state: dict, directory: str) -> str:
    """Write ``state`` as ``directory/model.pt`` (local folder); returns the file path."""
    import torch

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT_FILE)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a reader never sees half a checkpoint
    return path


def _locate(uri: str, storage: StorageConfig) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs  # here, not at the top: see raeae.storage

    fs, path = resolve(uri, storage)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise CheckpointError(explain(exc, uri)) from None
    if info.type == pafs.FileType.Directory:
        path = posixpath.join(path, CHECKPOINT_FILE)
        info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"{uri}: no checkpoint there (expected a folder holding {CHECKPOINT_FILE}, or the file)")
    return fs, path


def builtin_names() -> list[str]:
    """The bundled models, as ``builtin:NAME`` strings."""
    return sorted(BUILTIN + p.stem for p in BUILTIN_DIR.glob("*.pt"))


def _builtin_bytes(uri: str) -> bytes:
    if uri == AUTO:
        raise CheckpointError(f"{AUTO} picks a model per image, which only restore, nightly and evaluate "
                              f"do; name one here ({', '.join(builtin_names())})")
    path = BUILTIN_DIR / f"{uri[len(BUILTIN):]}.pt"
    if uri[len(BUILTIN):] in ("", ".", "..") or "/" in uri or not path.is_file():
        raise CheckpointError(f"{uri}: no such bundled model (bundled: {', '.join(builtin_names() + [AUTO])})")
    return path.read_bytes()


def auto_names() -> list[str]:
    """The bundled models ``builtin:auto`` stands for, in order: gray, colour, then the JPEG models,
    all qualities and low qualities (those present)."""
    return [n for n in ("gray", "color", "jpeg", "jpeg-low") if (BUILTIN_DIR / f"{n}.pt").is_file()]


def read_models(uri: str, storage: StorageConfig = StorageConfig()) -> list[bytes]:
    """The checkpoint(s) a restore uses: the one at ``uri``, or for ``builtin:auto`` every bundled
    model (:func:`auto_names`; each image then goes to the one that fits it, see
    :func:`raeae.inference.pick_model`)."""
    if uri == AUTO:
        found = [_builtin_bytes(BUILTIN + n) for n in auto_names()]
        if not found:
            raise CheckpointError(f"{AUTO}: no bundled models in {BUILTIN_DIR}; give --model")
        return found
    return [read_checkpoint_bytes(uri, storage)]


@dataclass(frozen=True)
class RunModels:
    """The checkpoint(s) a run restores with (several for ``builtin:auto``), read once: their bytes,
    headers (read now, so a bad checkpoint fails before Ray starts) and ids."""

    uri: str
    blobs: tuple[bytes, ...]
    headers: tuple[dict, ...]
    ids: tuple[str, ...]

    @property
    def model_id(self) -> str:
        """What a row records: the ids joined by '+' (``builtin:auto`` is several models)."""
        return "+".join(self.ids)

    @classmethod
    def read(cls, uri: str, storage: StorageConfig = StorageConfig()) -> "RunModels":
        blobs = tuple(read_models(uri, storage))
        return cls(uri, blobs, tuple(read_header(b, uri) for b in blobs), tuple(model_id(b) for b in blobs))


def read_checkpoint_dir(directory: str) -> dict:
    """The state in a Ray Train checkpoint's folder (the driver's result and a worker's resume read it)."""
    with open(os.path.join(directory, CHECKPOINT_FILE), "rb") as f:
        return parse(f.read(), directory)


def read_checkpoint_bytes(uri: str, storage: StorageConfig = StorageConfig()) -> bytes:
    """The bytes of ``model.pt`` at ``uri``: a folder or file on any filesystem, or ``builtin:NAME``."""
    if uri.startswith(BUILTIN):
        return _builtin_bytes(uri)
    fs, path = _locate(uri, storage)
    try:
        return read_bytes(fs, path)
    except OSError as exc:
        raise CheckpointError(explain(exc, uri)) from None


def parse(data: bytes, uri: str = "checkpoint") -> dict:
    """Bytes of ``model.pt`` -> state dict; refuses pickled code and foreign files with one clear line."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here means the same thing to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = str(exc)
        if "GLOBAL" in text or "Unsupported global" in text:
            what = next((l.strip() for l in text.splitlines() if "GLOBAL" in l or "global" in l), first)
            raise CheckpointError(f"{uri}: refused - the checkpoint holds pickled code, and raeae loads "
                                  f"weights only ({what[:160]})") from None
        detail = next((l.strip() for l in str(exc).splitlines()
                       if "load key" in l or "zip" in l.lower() or "Unsupported" in l), first)
        raise CheckpointError(f"{uri}: not a readable checkpoint ({detail[:160]})") from None
    return _check_raeae(state, uri)


def _check_raeae(state, uri: str) -> dict:
    if not isinstance(state, dict) or state.get("format") != "raeae" or "model_config" not in state:
        raise CheckpointError(f"{uri}: not a raeae checkpoint (no model config inside)")
    return state


class _Tensor:
    """Where :func:`read_header` meets a tensor: its storage's dtype name, without the values."""

    def __init__(self, storage: str):
        self.storage = storage

    def __repr__(self) -> str:
        return f"<tensor {self.storage}>"


class _HeaderUnpickler(pickle.Unpickler):
    """The pickle of a ``torch.save`` zip, read without torch. Like ``torch.load(weights_only=True)``
    it refuses every global but the few a state dict of tensors needs, so it never runs code."""

    def __init__(self, data: bytes, records: set[str]):
        super().__init__(io.BytesIO(data))
        self.records = records

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return lambda storage, *args: storage
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage type, record key, location, numel): the values live in data/<key>
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.60}")
        if str(pid[2]) not in self.records:
            raise pickle.UnpicklingError(f"tensor data {pid[2]} missing from the zip")
        return _Tensor(pid[1] if isinstance(pid[1], str) else str(pid[1]))


def read_header(data: bytes, uri: str = "checkpoint") -> dict:
    """Bytes of ``model.pt`` -> its state dict with every tensor a placeholder, without importing
    torch; the same checks and one-line errors as :func:`parse` (pickled code refused, a foreign or
    damaged file named). Enough to check a checkpoint and read its configs before any model loads."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                raise ValueError("no data.pkl in the zip")
            prefix = pkl[: -len("data.pkl")]
            damaged = z.testzip()  # the CRC check torch.load would fail on
            if damaged is not None:
                raise ValueError(f"bad CRC in {damaged}")
            records = {n[len(prefix) + len("data/"):] for n in names if n.startswith(prefix + "data/")}
            state = _HeaderUnpickler(z.read(pkl), records).load()
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):
            raise CheckpointError(f"{uri}: refused - the checkpoint holds pickled code, and raeae loads "
                                  f"weights only ({str(exc)[:160]})") from None
        raise CheckpointError(f"{uri}: not a readable checkpoint ({str(exc)[:160]})") from None
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError, OSError) as exc:
        raise CheckpointError(f"{uri}: not a readable checkpoint ({str(exc)[:160] or type(exc).__name__})") from None
    return _check_raeae(state, uri)


def model_id(data: bytes) -> str:
    """Identity of a trained model: the first 16 hex digits of the SHA-256 of its ``model.pt``."""
    return hashlib.sha256(data).hexdigest()[:16]


def model_from_state(state: dict) -> "DenseAutoencoder":
    from raeae.model import ModelConfig, build_model

    model = build_model(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    noise = state.get("noise") or {}
    if model.config.jpeg_input and noise.get("noise") == "jpeg":
        model.jpeg_qualities = (int(noise.get("quality", 1)), int(noise.get("quality_max", 100)))
        model.jpeg_noise = float(noise.get("noise_share", 0.5)) > 0
    return model.eval()


def recommended_stride(state: dict, override: int = 0) -> int:
    """The tile stride to restore with: ``override`` when given, else the checkpoint's recommendation
    (the stride its training validated with), else half a patch."""
    return override or int(state.get("inference", {}).get("stride", 0)) or \
        default_stride(int(state["model_config"]["patch_size"]))


def load_state(uri: str, storage: StorageConfig = StorageConfig()) -> tuple[dict, str]:
    """(state dict, model id) of the checkpoint at ``uri``."""
    try:
        data = read_checkpoint_bytes(uri, storage)
    except StorageError as exc:
        raise CheckpointError(str(exc)) from None
    return parse(data, uri), model_id(data)


def load_model(uri: str, storage: StorageConfig = StorageConfig()) -> "DenseAutoencoder":
    """The trained model (eval mode, on CPU) of a checkpoint folder or file, local or in object storage."""
    state, _ = load_state(uri, storage)
    return model_from_state(state)
