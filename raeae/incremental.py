"""Nightly, incremental, exactly-once restoration of a growing archive.

Layout of an output (any filesystem)::

    OUTPUT/run=<run_id>/*.parquet        rows restored by that run (the Parquet contract)
    OUTPUT/_manifests/<seq>-<run_id>.json the commit record, written last and atomically

A run is committed when, and only when, its manifest exists. The manifest names the exact data files
of the run, so leftovers of a crashed attempt are never read; readers see only committed runs, and
the next run deletes uncommitted run folders and redoes their work. Killing a run at any point
therefore loses nothing (its inputs are still "new" next time) and duplicates nothing (its partial
files are invisible). One nightly at a time per output: a run holds the output's lock
(:mod:`raeae.lock`) from before it reads the manifests until after its commit.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raeae import checkpoint as ckpt
from raeae.cluster import connect
from raeae.lock import OutputLock
from raeae.report import REPORTS_DIR, nightly_reports, write_quietly
from raeae.restoring import SCHEMA, RestoreConfig, parquet_files, print_summary, run_context, run_pipeline, summarise
from raeae.storage import (StorageConfig, StorageError, explain, first_names, list_files, resolve, skipped_note,
                           write_atomic)

MANIFESTS = "_manifests"


@dataclass(frozen=True)
class NightlyConfig:
    """Restore what is new or changed in an archive since the last committed run, exactly once."""

    model: str = field(default=ckpt.AUTO, metadata={"help": "builtin:auto, builtin:NAME, or a "
                                                            "checkpoint folder or model.pt (local or s3://)"})
    archive: str = field(default="", metadata={"help": "folder or prefix of the growing image archive"})
    output: str = field(default="", metadata={"help": "nightly output: one run=<id>/ folder per run plus "
                                                      "_manifests/"})
    run_id: str = field(default="", metadata={
        "help": "name of this run (default: UTC time, e.g. 20261128T020000Z); re-running a committed "
                "id restores nothing, re-running an uncommitted one redoes it"})
    reprocess: bool = field(default=False, metadata={"help": "restore everything again as a new run "
                                                             "(e.g. after training a better model)"})
    retry_errors: bool = field(default=False, metadata={
        "help": "retry files whose last row is an error even if unchanged (off: a corrupt file stays "
                "corrupt, and retrying only repeats its error row)"})
    restore: RestoreConfig = RestoreConfig()

    def __post_init__(self) -> None:
        if self.run_id and (not self.run_id.replace("-", "").replace("_", "").replace(".", "").isalnum()):
            raise ValueError(f"run_id may hold letters, digits, '-', '_' and '.', got {self.run_id!r}")


def _manifest_infos(fs: pafs.FileSystem, root: str) -> list[dict]:
    """Committed manifests in commit order."""
    sel = pafs.FileSelector(posixpath.join(root, MANIFESTS), recursive=False, allow_not_found=True)
    out = []
    for info in fs.get_file_info(sel):
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                out.append(json.loads(f.read()))
    return sorted(out, key=lambda m: m["seq"])


def new_run_id() -> str:
    """A run id when none is given: the UTC time it starts, to the second (sortable, and one a night)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def committed_table(fs: pafs.FileSystem, root: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of all committed runs, in commit order, each with its place (:func:`read_rows`)."""
    return read_rows(fs, _committed_files(fs, root), columns)


def _committed_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """The data files of the committed runs, in commit order (what the manifests name)."""
    return [posixpath.join(root, rel) for m in _manifest_infos(fs, root) for rel in m["files"]]


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
            return fs, _committed_files(fs, root)
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


def _to_us(mtime: float | None) -> int | None:
    return None if mtime is None else int(mtime * 1_000_000)


def select_new(files: list[dict], state: pa.Table, model_ids: set[str], retry_errors: bool) -> list[dict]:
    """Files not yet restored by this model (any of ``model_ids``, for builtin:auto), or changed (size
    or mtime) since they were."""
    if len(state) == 0:
        return list(files)
    latest = latest_per_path(state)
    known = {p: (s, m.value if m is not None and hasattr(m, "value") else m, mid, st)
             for p, s, m, mid, st in zip(latest["path"].to_pylist(), latest["source_size"].to_pylist(),
                                          pc.cast(latest["source_mtime"], pa.int64()).to_pylist(),
                                          latest["model_id"].to_pylist(), latest["status"].to_pylist())}
    out = []
    for f in files:
        prev = known.get(f["path"])
        if (prev is None or prev[0] != f["size"] or prev[1] != _to_us(f["mtime"]) or prev[2] not in model_ids
                or (retry_errors and prev[3] != "ok")):
            out.append(f)
    return out


def gone_from_archive(files: list[dict], state: pa.Table) -> list[str]:
    """Paths that committed runs restored but the archive no longer lists, sorted. Their rows stay: a
    listing that misses files for a night (a permission change, a moved prefix) must not delete what
    was restored, and the restored image may be the only good copy left."""
    listed = {f["path"] for f in files}
    return sorted({p for p in state["path"].to_pylist() if p not in listed})


def _clean_uncommitted(fs: pafs.FileSystem, root: str, committed_ids: set[str]) -> list[str]:
    """Delete run folders that have no manifest: the remains of crashed attempts."""
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and name.startswith("run=") and name[4:] not in committed_ids:
            fs.delete_dir(info.path)
            removed.append(name[4:])
    return removed


def nightly(cfg: NightlyConfig, verbose: bool = False) -> dict:
    """One nightly run: list, select what is new, restore it, commit. Returns the manifest."""

    for name in ("model", "archive", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    storage = cfg.restore.storage
    model_bytes = ckpt.read_models(cfg.model, storage)
    for b in model_bytes:
        ckpt.read_header(b, cfg.model)  # fail fast on a bad checkpoint
    ids = [ckpt.model_id(b) for b in model_bytes]
    model_ids, model_id = set(ids), "+".join(ids)
    files, skipped = list_files(cfg.archive, storage)
    fs, root = resolve(cfg.output, storage)
    run_id = cfg.run_id or new_run_id()
    try:
        lock = OutputLock(fs, root, run_id)
        lock.acquire()  # before anything is read: what another run committed meanwhile counts
    except OSError as exc:
        raise StorageError(explain(exc, cfg.output)) from None
    try:
        return _run(cfg, lock, files, skipped, model_ids, model_id, verbose)
    finally:
        lock.release()


def _run(cfg: NightlyConfig, lock: OutputLock, files: list[dict], skipped: list[str], model_ids: set[str],
         model_id: str, verbose: bool) -> dict:
    """The run itself, holding ``lock``: clean up, select, restore, commit."""
    fs, root, run_id = lock.fs, lock.root, lock.run_id
    if lock.taken_over:
        print(f"raeae nightly: took over {lock.taken_over}")
    try:
        manifests = _manifest_infos(fs, root)
    except OSError as exc:
        raise StorageError(explain(exc, cfg.output)) from None
    committed = {m["run_id"] for m in manifests}
    if run_id in committed:
        print(f"raeae nightly: run {run_id} is already committed; nothing to do")
        return next(m for m in manifests if m["run_id"] == run_id)
    removed = _clean_uncommitted(fs, root, committed)
    if removed:
        print(f"raeae nightly: removed uncommitted runs {', '.join(sorted(removed))} (they are redone now)")
    state = committed_table(fs, root, ["path", "source_size", "source_mtime", "model_id", "status"])
    todo = list(files) if cfg.reprocess else select_new(files, state, model_ids, cfg.retry_errors)
    print(f"raeae nightly: run {run_id}: {len(files)} images in {cfg.archive}, {len(todo)} to restore "
          f"(model {model_id})")
    if skipped:
        print(f"raeae nightly: {skipped_note(skipped)}")
    gone = gone_from_archive(files, state)
    if gone:
        print(f"raeae nightly: {len(gone)} file(s) restored by earlier runs are no longer in the archive; "
              f"their rows stay ({first_names(gone)})")
    run_dir = posixpath.join(root, f"run={run_id}")
    t0 = time.perf_counter()
    if todo:
        connect(verbose)
        restore_cfg = RestoreConfig(**{**cfg.restore.__dict__, "model": cfg.model, "input": cfg.archive,
                                       "output": cfg.output})
        out_uri = f"{cfg.output.rstrip('/')}/run={run_id}"
        run_pipeline(todo, model_id, restore_cfg, out_uri)
    data_files = parquet_files(fs, run_dir)
    summary = summarise(fs, data_files, time.perf_counter() - t0)
    if summary["rows"] != len(todo):  # never commit a run that lost or doubled rows
        raise RuntimeError(f"run {run_id} wrote {summary['rows']} rows for {len(todo)} files; not committed")
    seq = (manifests[-1]["seq"] + 1) if manifests else 1
    manifest = {"run_id": run_id, "seq": seq, "model": cfg.model, "model_id": model_id, "archive": cfg.archive,
                "files": [posixpath.relpath(f, root) for f in data_files], **summary,
                "inputs_listed": len(files), "inputs_skipped": len(skipped), "inputs_gone": len(gone),
                "inputs_restored": len(todo), "reprocess": cfg.reprocess,
                "committed_at": datetime.now(timezone.utc).isoformat(), "output": cfg.output,
                **run_context(cfg.restore)}
    lock.check()  # a run whose lock was taken over must not commit: the new holder redoes its work
    write_atomic(fs, posixpath.join(root, MANIFESTS, f"{seq:08d}-{run_id}.json"),
                  json.dumps(manifest, indent=2).encode())
    print_summary(f"raeae nightly: run {run_id} committed", {**summary, "files": len(todo), "output": cfg.output})
    if write_quietly("raeae nightly", nightly_reports, cfg.output, cfg.restore.storage, run_id):
        print(f"raeae nightly: report {cfg.output.rstrip('/')}/{REPORTS_DIR}/{run_id}.html "
              f"(the nights: {REPORTS_DIR}/index.html)")
    return manifest
