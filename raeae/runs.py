"""Which training run an invocation belongs to: a new one, or a resume the user asked for.

Ray Train V2 resumes whenever a run with the same ``storage_path`` and ``name`` exists. A derived
default name made an unrelated later command (a new time budget, a new ``--output``) silently pick
up an old, finished run, so every ``raeae train`` is a new run unless the user names one or says
``--resume``. A resumed run must have the settings it was started with: the record written at the
start of each run (``raeae_run.json``) is compared field by field.
"""

from __future__ import annotations

import json
import posixpath
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raeae import checkpoint as ckpt
from raeae.storage import StorageConfig, StorageError, explain, read_bytes, resolve, write_bytes

if TYPE_CHECKING:
    import pyarrow.fs as pafs

RECORD = "raeae_run.json"
# Settings that may change between attempts of one run: where things go and how many resources it
# gets, not what it learns. Everything else must match for a resume.
RUNTIME_FIELDS = frozenset({"output", "workers", "gpu", "cpus_per_worker", "storage", "failures",
                            "keep_checkpoints", "run_name", "precision"})


@dataclass(frozen=True)
class RunState:
    """The run an invocation trains: its name, whether it resumes, and its latest checkpoint."""

    name: str
    resumed: bool
    latest: dict | None  # the latest checkpoint's state (progress, metrics, weights), if any

    @property
    def finished(self) -> str:
        """Why the run stopped ("" while it can still train)."""
        return (self.latest or {}).get("progress", {}).get("stopped", "") if self.resumed else ""

    @property
    def epoch(self) -> int:
        return int((self.latest or {}).get("progress", {}).get("epoch", 0))


def new_run_name() -> str:
    """Sortable by start time; the random tail keeps two runs started in the same second apart."""
    return time.strftime("train-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _root(storage_path: str, storage: StorageConfig) -> tuple[pafs.FileSystem, str]:
    return resolve(storage_path, storage)


def _dirs(fs: pafs.FileSystem, path: str) -> list[str]:
    import pyarrow.fs as pafs  # here, not at the top: see raeae.storage

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError as exc:
        raise StorageError(explain(exc, path)) from None
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)


def read_record(fs: pafs.FileSystem, root: str, name: str) -> dict | None:
    import pyarrow.fs as pafs  # here, not at the top: see raeae.storage

    path = posixpath.join(root, name, RECORD)
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        return json.loads(read_bytes(fs, path))
    except (OSError, ValueError):
        return None


def write_record(storage_path: str, storage: StorageConfig, name: str, config: dict) -> None:
    fs, root = _root(storage_path, storage)
    record = {"name": name, "started": time.time(), "config": config}
    write_bytes(fs, posixpath.join(root, name, RECORD), json.dumps(record, indent=2).encode())


def latest_checkpoint(fs: pafs.FileSystem, root: str, name: str) -> dict | None:
    """The newest ``checkpoint_*`` of run ``name`` (Ray Train names them by time), parsed."""
    for d in reversed([d for d in _dirs(fs, posixpath.join(root, name)) if d.startswith("checkpoint_")]):
        path = posixpath.join(root, name, d, ckpt.CHECKPOINT_FILE)
        try:
            return ckpt.parse(read_bytes(fs, path), path)
        except (OSError, ckpt.CheckpointError):
            continue  # a checkpoint cut short by a kill: the one before it is what Ray resumes from
    return None


def latest_run(fs: pafs.FileSystem, root: str) -> str | None:
    """The most recently started run under ``root`` that has a record."""
    started = [(r["started"], n) for n in _dirs(fs, root) if (r := read_record(fs, root, n))]
    return max(started)[1] if started else None


def differences(stored: dict, current: dict, defaults: dict | None = None, prefix: str = "") -> list[str]:
    """``field: stored -> current`` for every setting that differs, runtime ones aside. A setting that
    raeae added after the run started is missing from its record: it counts as its default there
    (``defaults``), so a run resumes under a newer raeae as long as the new setting is left as it was."""
    defaults = defaults or {}
    out = []
    for key in sorted(set(stored) | set(current)):
        if key in RUNTIME_FIELDS:
            continue
        old, new = stored.get(key, defaults.get(key)), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, defaults.get(key) or {}, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out


def choose_run(run_name: str, resume: bool, storage_path: str, storage: StorageConfig,
               config: dict, defaults: dict | None = None) -> RunState:
    """A new run, or the named/latest run to resume after checking that its settings match."""
    fs, root = _root(storage_path, storage)
    if not run_name and not resume:
        return RunState(new_run_name(), resumed=False, latest=None)
    name = run_name or latest_run(fs, root)
    if name is None:
        raise ValueError(f"--resume: no run to resume under {storage_path}")
    record = read_record(fs, root, name)
    latest = latest_checkpoint(fs, root, name)
    if record is None and latest is None:
        if resume:
            raise ValueError(f"--resume: no run named {name} under {storage_path}")
        return RunState(name, resumed=False, latest=None)  # a new run with the name the user chose
    stored = record["config"] if record else latest.get("train_config", {})
    diffs = differences(stored, config, defaults)
    if diffs:
        raise ValueError(f"run {name} was started with other settings ({'; '.join(diffs)}); "
                         f"resume it with the same flags, or start a new run without --resume/--run-name")
    return RunState(name, resumed=True, latest=latest)
