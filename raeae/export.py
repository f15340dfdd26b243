"""Writing restored images from Parquet back to image files, mirroring the source paths."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeae.storage import StorageConfig, StorageError, explain, resolve, strip_scheme, write_bytes


@dataclass(frozen=True)
class ExportConfig:
    """Write the restored images of a restore or nightly output as PNG files under a folder."""

    input: str = field(default="", metadata={"help": "a `raeae restore` or `raeae nightly` output (Parquet)"})
    output: str = field(default="", metadata={"help": "folder (local or s3://) to write the PNG files into"})
    storage: StorageConfig = StorageConfig()


def safe_relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` as a name that cannot leave the export folder: ``..`` parts
    (legal in object keys) become ``__``, empty and ``.`` parts are dropped, absolute becomes relative."""
    p, r = strip_scheme(path), strip_scheme(root).rstrip("/")
    rel = p[len(r) + 1:] if r and p.startswith(r + "/") else p
    parts = ["__" if part == ".." else part for part in rel.split("/") if part not in ("", ".")]
    if not parts:
        raise ValueError(f"source path has no file name: {path!r}")
    return "/".join(parts)


def export_names(paths: list[str]) -> dict[str, str]:
    """Source path -> relative PNG name, relative to the sources' common folder; a name that two
    sources would share (a.jpg and a.png) keeps its original extension before .png."""
    stripped = [strip_scheme(p) for p in paths]
    root = posixpath.commonpath(stripped) if len(stripped) > 1 else posixpath.dirname(stripped[0]) if stripped else ""
    root = root if "/.." not in root + "/" else ""
    if len(stripped) > 1 and root in stripped:  # all the same file is impossible; a file as root is not a folder
        root = posixpath.dirname(root)
    names = {p: posixpath.splitext(safe_relative(p, root))[0] + ".png" for p in paths}
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {p: (n if counts[n] == 1 else safe_relative(p, root) + ".png") for p, n in names.items()}


def export(cfg: ExportConfig) -> int:
    """Write every ok row's PNG (for a nightly output, each path's latest committed row); returns how
    many files were written. The PNGs stream from the Parquet files a few rows at a time, so an export
    holds the paths of the whole output but the images of only one batch (an output can be far larger
    than memory)."""
    from raeae.contract import latest_per_path, read_rows, restored_files

    if not cfg.input or not cfg.output:
        raise ValueError("--input and --output are required")
    in_fs, files = restored_files(cfg.input, cfg.storage)
    try:  # each path's latest row, and where it lies, from the small columns only
        latest = latest_per_path(read_rows(in_fs, files, ["path", "status"]))
    except OSError as exc:
        raise StorageError(explain(exc, cfg.input)) from None
    ok = latest.filter(pc.equal(latest["status"], "ok"))
    names = export_names(ok["path"].to_pylist())
    wanted = set(zip(ok["_file"].to_pylist(), ok["_file_row"].to_pylist()))
    wanted_files = {f for f, _ in wanted}
    out_fs, root = resolve(cfg.output, cfg.storage)
    written = 0
    for i, path in enumerate(files):
        if i not in wanted_files:
            continue
        row = 0
        for batch in pq.ParquetFile(in_fs.open_input_file(path)).iter_batches(batch_size=EXPORT_BATCH,
                                                                                columns=["path", "image"]):
            for source, png in zip(batch.column("path").to_pylist(), batch.column("image").to_pylist()):
                if (i, row) in wanted:
                    write_bytes(out_fs, posixpath.join(root, names[source]), png)
                    written += 1
                row += 1
    print(f"raeae export: wrote {written} PNG files to {cfg.output} ({len(latest) - len(ok)} error rows skipped)")
    return written


# rows per read while exporting: 64 large restored PNGs are tens of MB
EXPORT_BATCH = 64

