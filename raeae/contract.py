"""The Parquet contract: the schema of a restored row, the summary beside a plain restore's files, the
manifests that commit a nightly run's files, and the readers of both kinds of output. Restore and
nightly write it; export, evaluate, the reports, the demo and ``raeae.read_restored`` read it, all
through this module.
"""

from __future__ import annotations

import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raeae.storage import StorageConfig, StorageError, explain, resolve


# The Parquet contract: one row per input file.
SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),  # source URI
    pa.field("image", pa.binary()),  # PNG of the restored image; null on error
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("channels", pa.int32()),  # channels of the restored PNG (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
    pa.field("bits", pa.int32()),  # bits per channel of the restored PNG: 8, or 16 for a 16-bit source
    pa.field("source_mode", pa.string()),  # the source's Pillow mode (L, RGB, P, I;16, CMYK...; RGB;16 etc.)
    pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
    pa.field("error", pa.string()),  # why, when status is "error"; null when ok
    pa.field("source_size", pa.int64()),  # bytes, from the listing
    pa.field("source_mtime", pa.timestamp("us", tz="UTC")),  # from the listing
    pa.field("model_id", pa.string(), nullable=False),  # sha256[:16] of the checkpoint file
    # σ (0-255) the model was told about this image: --noise-level, else the image's own estimate;
    # null for a model that takes none, and on error. Sorting by it finds an archive's worst scans.
    pa.field("noise_sigma", pa.float32()),
    # The damage found and acted on (raeae.damage): impulse, jpeg, noise, unknown (too small or flat to
    # judge: restored as noise), none (--damage none: written back unchanged); null on error
    pa.field("damage", pa.string()),
    pa.field("damage_source", pa.string()),  # image (found in the pixels), file (a JPEG's tables), flag (--damage)
    pa.field("jpeg_quality", pa.float32()),  # the JPEG quality (IJG scale) restored for; null without JPEG damage
    pa.field("impulse_share", pa.float32()),  # share of pixel values found to be impulses; null where not looked for
    pa.field("restored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("seconds", pa.float32()),  # time spent on this file in all stages (the sum of the next three)
    pa.field("decode_s", pa.float32()),  # reading and decoding it (CPU task)
    pa.field("restore_s", pa.float32()),  # its share of the model actor's time (tiling, model, stitching)
    pa.field("forward_s", pa.float32()),  # of which in the model's forward passes (what a GPU speeds up)
    pa.field("encode_s", pa.float32()),  # PNG-encoding it (CPU task)
])
SUMMARY_FILE = "_summary.json"


def parquet_files(fs: pafs.FileSystem, path: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


STAGE_COLUMNS = ("decode_s", "restore_s", "forward_s", "encode_s")


def summarise(fs: pafs.FileSystem, files: list[str], wall_s: float) -> dict:
    """Counts from the Parquet as written (not from what we meant to write), and the seconds each
    stage was busy in all (``forward_s`` is the part of ``restore_s`` spent in the model itself)."""
    ok = errors = 0
    pixels = 0
    stages = dict.fromkeys(STAGE_COLUMNS, 0.0)
    for f in files:
        t = pq.read_table(f, filesystem=fs, columns=["status", "width", "height", *STAGE_COLUMNS], schema=SCHEMA)
        status = np.asarray(t["status"].to_pylist())
        is_ok = status == "ok"
        ok += int(is_ok.sum())
        errors += int((~is_ok).sum())
        w = t["width"].to_numpy(zero_copy_only=False)
        h = t["height"].to_numpy(zero_copy_only=False)
        pixels += int(np.nansum(np.where(is_ok, w.astype(float) * h.astype(float), 0)))
        for c in STAGE_COLUMNS:
            stages[c] += float(np.nansum(t[c].to_numpy(zero_copy_only=False).astype(float)))
    rows = ok + errors
    return {"rows": rows, "ok": ok, "errors": errors, "wall_s": round(wall_s, 3),
            "images_per_s": round(rows / wall_s, 2) if wall_s > 0 else None,
            "megapixels_per_s": round(pixels / 1e6 / wall_s, 3) if wall_s > 0 else None,
            "megapixels": round(pixels / 1e6, 3), "parquet_files": len(files),
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()}}


MANIFESTS = "_manifests"


def manifest_infos(fs: pafs.FileSystem, root: str) -> list[dict]:
    """Committed manifests in commit order."""
    sel = pafs.FileSelector(posixpath.join(root, MANIFESTS), recursive=False, allow_not_found=True)
    out = []
    for info in fs.get_file_info(sel):
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                out.append(json.loads(f.read()))
    return sorted(out, key=lambda m: m["seq"])


def committed_table(fs: pafs.FileSystem, root: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of all committed runs, in commit order, each with its place (:func:`read_rows`)."""
    return read_rows(fs, committed_files(fs, root), columns)


def committed_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """The data files of the committed runs, in commit order (what the manifests name)."""
    return [posixpath.join(root, rel) for m in manifest_infos(fs, root) for rel in m["files"]]


# the columns read_rows adds: where each row lies (which of the files, in order, and which row of it)
PLACE = ["_file", "_file_row"]


def read_rows(fs: pafs.FileSystem, files: list[str], columns: list[str] | None) -> pa.Table:
    """The rows of ``files`` in order, as the current contract (a column added since a file was written
    reads as nulls), each with its place: ``_file`` (index into ``files``) and ``_file_row``."""
    tables = []
    for i, path in enumerate(files):
        t = pq.read_table(path, filesystem=fs, columns=columns, schema=SCHEMA)
        tables.append(t.append_column(PLACE[0], pa.array(np.full(len(t), i), pa.int64()))
                      .append_column(PLACE[1], pa.array(np.arange(len(t)), pa.int64())))
    if not tables:
        schema = pa.schema([SCHEMA.field(c) for c in columns]) if columns else SCHEMA
        return pa.schema([*schema, *(pa.field(c, pa.int64()) for c in PLACE)]).empty_table()
    return pa.concat_tables(tables)


def latest_per_path(table: pa.Table) -> pa.Table:
    """Keep the last row (files in commit order, then last written) of every ``path``."""
    if len(table) == 0:
        return table
    t = table.append_column("_row", pa.array(np.arange(len(table)), pa.int64()))
    last = t.group_by("path").aggregate([("_row", "max")])
    keep = np.sort(last["_row_max"].to_numpy())
    return t.take(pa.array(keep)).drop_columns(["_row"])


def restored_files(output: str, storage: StorageConfig = StorageConfig()) -> tuple[pafs.FileSystem, list[str]]:
    """(filesystem, the data files a reader of ``output`` reads, in commit order): a nightly output's
    committed runs, or a plain ``raeae restore`` output's files."""
    fs, root = resolve(output, storage)
    try:
        if fs.get_file_info(posixpath.join(root, MANIFESTS)).type == pafs.FileType.Directory:
            return fs, committed_files(fs, root)
        files = parquet_files(fs, root)
        if not files and fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise StorageError(f"{output}: no such output")
    except OSError as exc:
        raise StorageError(explain(exc, output)) from None
    return fs, files


def read_restored(output: str, storage: StorageConfig = StorageConfig(), columns: list[str] | None = None) -> pa.Table:
    """The latest committed row per source path of a nightly output, or every row of a plain
    ``raeae restore`` output; same columns as the Parquet contract."""
    fs, files = restored_files(output, storage)
    try:
        table = read_rows(fs, files, columns)
    except OSError as exc:
        raise StorageError(explain(exc, output)) from None
    return latest_per_path(table).drop_columns(PLACE)
