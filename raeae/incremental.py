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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raeae import checkpoint as ckpt
from raeae.cliutil import require_settings
from raeae.contract import MANIFESTS, committed_table, latest_per_path, manifest_infos, parquet_files, summarise
from raeae.cluster import connect
from raeae.lock import OutputLock
from raeae.report import REPORTS_DIR, nightly_reports, write_quietly
from raeae.restoring import RestoreConfig, print_summary, run_context, run_pipeline
from raeae.storage import (StorageError, explain, first_names, list_files, resolve, skipped_note,
                           write_atomic)



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




def new_run_id() -> str:
    """A run id when none is given: the UTC time it starts, to the second (sortable, and one a night)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")




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

    require_settings(cfg, "model", "archive", "output")
    storage = cfg.restore.storage
    models = ckpt.RunModels.read(cfg.model, storage)  # fails fast on a bad checkpoint
    model_ids, model_id = set(models.ids), models.model_id
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
        manifests = manifest_infos(fs, root)
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
