"""Writing restored images from Parquet back to image files, mirroring the source paths."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow.compute as pc

from raeae.storage import StorageConfig, resolve, strip_scheme, write_bytes


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
    """Write every ok row's PNG; returns how many files were written."""
    from raeae.nightly import read_restored

    if not cfg.input or not cfg.output:
        raise ValueError("--input and --output are required")
    table = read_restored(cfg.input, cfg.storage, columns=None)
    ok = table.filter(pc.equal(table["status"], "ok")) if len(table) else table
    paths = ok["path"].to_pylist()
    names = export_names(paths)
    fs, root = resolve(cfg.output, cfg.storage)
    for path, png in zip(paths, ok["image"].to_pylist()):
        write_bytes(fs, posixpath.join(root, names[path]), png)
    print(f"raeae export: wrote {len(paths)} PNG files to {cfg.output} "
          f"({len(table) - len(ok)} error rows skipped)")
    return len(paths)
