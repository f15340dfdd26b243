"""One writer per nightly output: a lock file that the running nightly keeps alive.

A nightly run deletes the run folders that have no manifest (the remains of killed runs), so a second
run on the same output while the first still works would delete the first run's files, restore the
same inputs again, and could even commit a manifest naming files that the other run had just deleted.
A scheduler that starts tonight's run while last night's still works, a retried Ray job, or a run by
hand beside the cron one are all that takes. So a run first takes ``OUTPUT/_lock.json``:

* the lock names its holder (run id, host, process id, a random token) and the time it was last known
  alive; the holder rewrites that time every :data:`HEARTBEAT_S` seconds from a background thread;
* a lock whose holder has gone is taken over: its process no longer exists on this host, or it has not
  been refreshed for :data:`STALE_S` seconds (a holder on another machine, killed with no chance to
  release it). Anything else refuses the second run with one line naming the holder;
* object stores have no create-if-absent here, so a run that wrote the lock waits :data:`SETTLE_S`
  and reads it back: of two runs that started together, only the one whose lock stayed goes on;
* the holder checks the lock is still its own just before it commits (a holder that stalled past
  :data:`STALE_S` and was taken over must not commit), and deletes it at the end, success or failure.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

import pyarrow.fs as pafs

from raeae.storage import write_atomic

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 20.0  # how often the holder says it is alive: a write a minute costs nothing beside a run
STALE_S = 120.0  # six missed heartbeats: a holder that silent is gone (or too stalled to commit safely)
SETTLE_S = 1.0  # between writing the lock and reading it back: far longer than a read-then-write takes


class OutputBusyError(ValueError):
    """Another nightly run holds the output; the message names it and says when to run again."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


class OutputLock:
    """The lock on one nightly output (see the module docstring): :meth:`acquire` it, :meth:`check` it
    before committing, :meth:`release` it at the end, whatever happened."""

    def __init__(self, fs: pafs.FileSystem, root: str, run_id: str, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S, settle_s: float = SETTLE_S):
        self.fs, self.root, self.run_id = fs, root, run_id
        self.path = posixpath.join(root, LOCK_FILE)
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        self.token = uuid.uuid4().hex
        self.record = {"run_id": run_id, "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                       "started_at": datetime.now(timezone.utc).isoformat()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.taken_over: str | None = None  # what acquire() took over from a holder that had gone

    def read(self) -> dict | None:
        """The lock as stored now, or None when there is none (or it cannot be parsed: a torn write)."""
        if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
            return None
        try:
            with self.fs.open_input_stream(self.path) as f:
                return json.loads(f.read())
        except FileNotFoundError:  # released between the two calls
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # not a lock raeae wrote (it writes whole files)
            return None

    def _write(self) -> None:
        # whole or not at all: a contender that read a half-written lock would take it for no lock
        write_atomic(self.fs, self.path, json.dumps({**self.record, "alive_at": time.time()}).encode())

    def gone(self, holder: dict) -> str | None:
        """Why ``holder``'s lock may be taken over (its process has ended, or it is silent), or None."""
        if holder.get("host") == self.record["host"] and not _process_alive(int(holder.get("pid", 0))):
            return f"its process {holder.get('pid')} on this host has ended"
        silent = time.time() - float(holder.get("alive_at", 0.0))
        return f"silent for {silent:.0f} s" if silent > self.stale_s else None

    def _refuse(self, holder: dict) -> OutputBusyError:
        silent = max(0.0, time.time() - float(holder.get("alive_at", 0.0)))
        return OutputBusyError(
            f"another nightly run is writing to this output: run {holder.get('run_id')} on {holder.get('host')} "
            f"(pid {holder.get('pid')}, started {holder.get('started_at')}, alive {silent:.0f} s ago); one run "
            f"at a time per output, so run again once it has ended (if it has died, its lock expires "
            f"{max(0.0, self.stale_s - silent):.0f} s from now)")

    def free(self) -> tuple[dict | None, str | None]:
        """The lock's holder now and why it may be taken over (None, None: no lock), or
        :class:`OutputBusyError` while a live run holds it. A long job (``raeae archive`` trains for
        minutes first) asks early, so it does not find its output taken only after its training."""
        holder = self.read()
        why = self.gone(holder) if holder else None
        if holder and why is None:
            raise self._refuse(holder)
        return holder, why

    def acquire(self) -> str | None:
        """Take the lock, or raise :class:`OutputBusyError`; returns what was taken over from an
        earlier holder that has gone (None if there was none)."""
        holder, why = self.free()
        self._write()
        time.sleep(self.settle_s)
        now = self.read()
        if not now or now.get("token") != self.token:
            raise self._refuse(now or {})
        self._beat = threading.Thread(target=self._heartbeat, name="raeae-lock-heartbeat", daemon=True)
        self._beat.start()
        self.taken_over = f"the lock of run {holder.get('run_id')} ({why})" if holder else None
        return self.taken_over

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self.read()
                if not holder or holder.get("token") != self.token:
                    return  # taken over: stop refreshing it; check() will refuse the commit
                self._write()
            except OSError:  # a passing storage error: the next beat tries again, well within STALE_S
                continue

    def check(self) -> None:
        """Raise :class:`OutputBusyError` unless the lock is still this run's (call before committing)."""
        holder = self.read()
        if not holder or holder.get("token") != self.token:
            raise OutputBusyError(f"run {self.run_id} lost its lock on this output while it ran "
                                  f"({'taken over by run ' + str(holder.get('run_id')) if holder else 'it was removed'}); "
                                  f"not committed, and the next run redoes its work")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still this run's."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = self.read()
        if holder and holder.get("token") == self.token:
            self.fs.delete_file(self.path)
