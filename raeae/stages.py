"""The restore pipeline's stages, each a pure function of one batch (a ``pyarrow.Table``) so Ray Data
can size and place them on its own:

1. :func:`decode_batch` (CPU tasks): read each file and decode it to uint8 (16 bits a channel: uint16) pixels;
2. :class:`ModelStage` (the actor pool, GPU with ``--gpu``): the model, with the tiles of many images
   packed into each forward pass, then the tiles stitched back;
3. :func:`encode_batch` (CPU tasks): PNG-encode and build the Parquet rows (``raeae.contract.SCHEMA``).

Every stage turns a failure on one file into that file's error row and passes rows that already
failed straight through, so each input file still becomes exactly one output row.

On CPU-only clusters :class:`FusedStage` runs the three functions one after the other in each model
actor's call (``Layout.FUSED``); with GPUs they are separate stages (``Layout.STAGED``), so that the
GPU never waits for decoding or encoding. Why, measured: :func:`raeae.restoring.plan_stages`.

Stitching stays on the actor: the tile outputs of an image are about (13/6)² ≈ 4.7 floats per pixel
value, ~19× the decoded image's bytes, and moving them through the object store to a CPU task would
cost more than the fold itself.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raeae.damage import Damage, DamageRequest, Kind
from raeae.images import SourceInfo, bits, channels, decode_image, encode_png
from raeae.jpeg import stated_scale
from raeae.storage import StorageConfig, read_bytes, resolve, strip_scheme

if TYPE_CHECKING:  # torch is imported by the model actors only: a decode or encode task's worker
    # stays ~300 MB smaller and starts ~1.5 s sooner without it
    from raeae.inference import Precision
    from raeae.patches import Blend

# Between stages: the listing's fields, the pixels (raw uint8 or uint16, C order) with their shape, and the
# seconds each stage spent on the row. large_binary: a batch of big images passes 2 GiB.
DECODED = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("size", pa.int64()),
    pa.field("mtime", pa.float64()),  # seconds since the epoch, NaN when the store does not say
    pa.field("pixels", pa.large_binary()),
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("depth", pa.int32()),  # 0 for an H×W array, else the third dimension
    pa.field("bits", pa.int32()),  # 8 (uint8), or 16 (uint16: 16-bit gray or colour, restored at 16 bits)
    pa.field("source_mode", pa.string()),
    # what the restored PNG keeps of the source (raeae.images.SourceInfo); null when it has none
    pa.field("icc_profile", pa.binary()),
    pa.field("exif", pa.binary()),
    pa.field("dpi", pa.list_(pa.float64(), 2)),
    pa.field("error", pa.string()),  # null while the row is fine
    pa.field("jpeg_scale", pa.float64()),  # the strength a JPEG file states in its tables; null for others
    pa.field("model_id", pa.string()),
    pa.field("noise_sigma", pa.float32()),
    # what the model stage found and acted on (raeae.damage); null on error
    pa.field("damage", pa.string()),
    pa.field("damage_source", pa.string()),
    pa.field("jpeg_quality", pa.float32()),
    pa.field("impulse_share", pa.float32()),
    pa.field("decode_s", pa.float32()),
    pa.field("restore_s", pa.float32()),
    pa.field("forward_s", pa.float32()),
])


def _rows(batch: pa.Table) -> list[dict]:
    """A decoded batch's rows, their pixels as views of the table's own buffers (to_pylist would copy
    every image into Python bytes)."""
    rows = batch.drop_columns(["pixels"]).to_pylist()
    for row, pixels in zip(rows, batch.column("pixels")):
        row["pixels"] = memoryview(pixels.as_buffer()) if pixels.is_valid else None
    return rows


def _error_text(exc: BaseException) -> str:
    return str(exc) if str(exc) else type(exc).__name__


def _pixels(row: dict) -> np.ndarray:
    shape = (row["height"], row["width"]) + ((row["depth"],) if row["depth"] else ())
    return np.frombuffer(row["pixels"], dtype=np.uint16 if row["bits"] == 16 else np.uint8).reshape(shape)


def _with_pixels(row: dict, image: np.ndarray) -> dict:
    # a view of the array's bytes: the table built from the rows copies them once (tobytes() would be a
    # second full-size copy, gigabytes for an archival scan)
    pixels = memoryview(np.ascontiguousarray(image)).cast("B")
    return {**row, "pixels": pixels, "height": image.shape[0], "width": image.shape[1],
            "depth": image.shape[2] if image.ndim == 3 else 0, "bits": bits(image)}


_FILESYSTEMS: dict = {}


def _filesystem(input_uri: str, storage: StorageConfig):
    """One filesystem per worker process and input, not one per batch (an S3 client costs ms to make)."""
    key = (input_uri, storage)
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = resolve(input_uri, storage)[0]
    return _FILESYSTEMS[key]


# A unit's files are read this many at a time: reading is mostly waiting (an object store answers each
# request in tens of milliseconds), so threads overlap the waits; decoding is CPU work and stays serial.
READ_THREADS = 16


def _read_all(fs, paths: list[str]) -> list[bytes | Exception]:
    """Each path's bytes, or the exception that reading it raised (to become its error row)."""
    def read(path: str) -> bytes | Exception:
        try:
            return read_bytes(fs, strip_scheme(path))
        except Exception as exc:  # noqa: BLE001 - one unreadable file is one error row
            return exc

    if len(paths) <= 1:
        return [read(p) for p in paths]
    with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(read, paths))


def decode_batch(batch: pa.Table, input_uri: str, storage: StorageConfig, max_pixels: int,
                 copy_metadata: bool = True) -> pa.Table:
    """Stage 1: listing rows (path, size, mtime) -> decoded rows (``DECODED``), with each source's colour
    profile, EXIF and DPI unless not ``copy_metadata``."""
    fs = _filesystem(input_uri, storage)
    items = batch.to_pylist()
    t0 = time.perf_counter()
    data = _read_all(fs, [item["path"] for item in items])
    read_s = (time.perf_counter() - t0) / max(1, len(items))  # the reads overlap: each row gets an equal share
    rows = []
    for i, item in enumerate(items):
        raw, data[i] = data[i], None  # each file's bytes go once decoded (a scan's are hundreds of MB)
        t0 = time.perf_counter()
        row = {"path": item["path"], "size": item["size"], "mtime": item["mtime"], "pixels": None,
               "height": None, "width": None, "depth": None, "bits": None, "source_mode": None, "icc_profile": None,
               "exif": None, "dpi": None, "error": None, "jpeg_scale": None, "model_id": None, "noise_sigma": None,
               "damage": None, "damage_source": None, "jpeg_quality": None, "impulse_share": None,
               "restore_s": 0.0, "forward_s": 0.0}
        try:
            if isinstance(raw, Exception):
                raise raw
            image, mode, info = decode_image(raw, max_pixels)
            row = {**_with_pixels(row, image), "source_mode": mode, "jpeg_scale": stated_scale(raw)}
            if copy_metadata:
                row.update(icc_profile=info.icc_profile, exif=info.exif, dpi=info.dpi)
        except Exception as exc:  # noqa: BLE001 - one bad file is one error row, never a dead job
            row["error"] = _error_text(exc)
        del raw
        row["decode_s"] = read_s + time.perf_counter() - t0
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED)


class ModelStage:
    """Stage 2, a Ray Data callable class: loads the model(s) once in ``__init__``; ``__call__`` restores
    a batch of decoded rows. With two models (``builtin:auto``) each image goes to the one made for it.

    ``precision`` sets the forward passes' number format (by default bfloat16 where the hardware has it,
    GPU or CPU: the dense layers' matrix multiplies in half precision, sums and the blend in float32)."""

    def __init__(self, model: str, model_id: str, storage: StorageConfig, stride: int, tile_batch: int,
                 threads: int, gpu: bool = False, blend: "Blend | None" = None, ensemble: bool = False,
                 precision: "Precision | None" = None, noise_level: float | None = None, damage: str = "auto"):
        import torch

        from raeae import checkpoint as ckpt
        from raeae.inference import Precision
        from raeae.patches import Blend
        from raeae.worker import prepare_worker

        prepare_worker(threads)
        # Each actor reads the checkpoint itself (a URI is a small constructor argument; megabytes of
        # weights as one make Ray's core log an error line per actor, and a restarted actor re-reads
        # them from storage), then checks it is the model the driver announced.
        models = ckpt.RunModels.read(model, storage)
        if models.model_id != model_id:
            raise RuntimeError(f"{model} changed while the run was starting (expected model {model_id})")
        model_bytes, ids = models.blobs, models.ids
        # The device follows the config (--gpu), never what happens to be installed on the node.
        self.device = torch.accelerator.current_accelerator() if gpu else torch.device("cpu")
        self.models, self.ids, self.strides = [], {}, {}
        for data, data_id in zip(model_bytes, ids):
            state = ckpt.parse(data)
            m = ckpt.model_from_state(state).to(self.device)
            self.models.append(m)
            self.ids[id(m)] = data_id
            self.strides[id(m)] = ckpt.recommended_stride(state, stride)
        self.tile_batch, self.ensemble = tile_batch, ensemble
        self.blend, self.precision = blend or Blend.GAUSSIAN, precision or Precision.AUTO
        self.request = DamageRequest.parse(damage)
        # None: each image's own estimate (noise_input models only); --damage gaussian:S gives one too
        self.noise_level = noise_level if noise_level is not None else self.request.sigma

    def _restore(self, model, images: list[np.ndarray], damages: list[Damage]) -> tuple[list[tuple[np.ndarray, float | None]], float]:
        """Each image restored, with the σ its model was told (None: the model takes none), and the
        seconds of forward passes."""
        from raeae.inference import restore_arrays

        forward_s, sigmas = [], []
        out = restore_arrays(model, images, self.strides[id(model)], self.tile_batch, self.device,
                             blend=self.blend, ensemble=self.ensemble, precision=self.precision,
                             on_forward=forward_s.append, noise_level=self.noise_level, on_sigma=sigmas.extend,
                             jpeg=[d.jpeg for d in damages])
        return list(zip(out, sigmas)), sum(forward_s)

    def _prepare(self, row: dict) -> tuple[np.ndarray, Damage]:
        """A decoded row's image as its model gets it, and its damage (recorded in the row): impulses
        are filled here, before the model restores what noise is left."""
        from raeae.damage import prepare

        image, damage = prepare(_pixels(row), self.request, row["jpeg_scale"])
        row.update(damage=damage.kind.value, damage_source=damage.source.value, jpeg_quality=damage.jpeg_quality,
                   impulse_share=damage.impulse_share)
        return image, damage

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raeae.inference import pick_model

        rows = _rows(batch)
        groups: dict[int, list[tuple[int, np.ndarray, Damage]]] = {}  # model index -> (row, image, damage)
        for i, row in enumerate(rows):
            row["model_id"] = self.ids[id(self.models[0])]  # error rows: the first model
            if row["error"] is None:
                t0 = time.perf_counter()
                try:
                    image, damage = self._prepare(row)
                    if damage.kind is not Kind.NONE:  # --damage none: written back as it came
                        model = pick_model(self.models, image, jpeg=damage.jpeg)
                        groups.setdefault(self.models.index(model), []).append((i, image, damage))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = _error_text(exc)
                row["restore_s"] += time.perf_counter() - t0  # finding the damage (and filling impulses)
        for index, members in groups.items():
            model = self.models[index]
            t0 = time.perf_counter()
            images = [im for _, im, _ in members]
            try:
                restored, forward_s = self._restore(model, images, [d for _, _, d in members])
                results = [(i, out, sigma) for (i, _, _), (out, sigma) in zip(members, restored)]
            except Exception:  # noqa: BLE001 - find the one image that fails; the others still restore
                results, forward_s = [], 0.0
                for i, image, damage in members:
                    try:
                        out, f = self._restore(model, [image], [damage])
                        results.append((i, *out[0]))
                        forward_s += f
                    except Exception as exc:  # noqa: BLE001
                        rows[i]["error"] = _error_text(exc)
            elapsed = time.perf_counter() - t0
            total = sum(im.size for im in images) or 1
            for (i, _, _), image in zip(members, images):  # the batch's time, shared out by pixels
                share = image.size / total
                rows[i].update(restore_s=rows[i]["restore_s"] + elapsed * share, forward_s=forward_s * share,
                               model_id=self.ids[id(model)])
            for i, out, sigma in results:
                rows[i] = {**_with_pixels(rows[i], out), "noise_sigma": sigma}
        return pa.Table.from_pylist(rows, schema=DECODED)


def _ts_us(seconds: float | None) -> int | None:
    return None if seconds is None or math.isnan(seconds) else int(seconds * 1_000_000)


def encode_batch(batch: pa.Table, png_level: int, schema: pa.Schema) -> pa.Table:
    """Stage 3: restored rows -> Parquet rows (``schema``, the restore contract), PNG-encoded."""
    out = []
    for row in _rows(batch):
        t0 = time.perf_counter()
        result = {"path": row["path"], "image": None, "width": None, "height": None, "channels": None, "bits": None,
                  "source_mode": row["source_mode"], "status": "error", "error": row["error"],
                  "source_size": row["size"], "source_mtime": _ts_us(row["mtime"]), "model_id": row["model_id"],
                  "noise_sigma": row["noise_sigma"], "damage": row["damage"], "damage_source": row["damage_source"],
                  "jpeg_quality": row["jpeg_quality"], "impulse_share": row["impulse_share"]}
        if row["error"] is None:
            try:
                image = _pixels(row)
                info = SourceInfo(row["icc_profile"], row["exif"], tuple(row["dpi"]) if row["dpi"] else None)
                result.update(image=encode_png(image, png_level, info), width=image.shape[1], height=image.shape[0],
                              channels=channels(image), bits=bits(image), status="ok")
            except Exception as exc:  # noqa: BLE001
                result["error"] = _error_text(exc)
        encode_s = time.perf_counter() - t0
        result.update(restored_at=_ts_us(time.time()), decode_s=row["decode_s"], restore_s=row["restore_s"],
                      forward_s=row["forward_s"], encode_s=encode_s,
                      seconds=row["decode_s"] + row["restore_s"] + encode_s)
        out.append(result)
    return pa.Table.from_pylist(out, schema=schema)


class FusedStage:
    """Stages 1-3 in one Ray Data callable class, for CPU-only clusters: each call decodes a unit of
    files, restores it with :class:`ModelStage` and encodes it, in the actor's own process. The stage
    functions are the same as in the staged layout, so are the rows."""

    def __init__(self, decode_kwargs: dict, encode_kwargs: dict, **model_kwargs):
        self.model = ModelStage(**model_kwargs)
        self.decode_kwargs, self.encode_kwargs = decode_kwargs, encode_kwargs

    def __call__(self, batch: pa.Table) -> pa.Table:
        return encode_batch(self.model(decode_batch(batch, **self.decode_kwargs)), **self.encode_kwargs)
