"""One writer per nightly output: the lock a nightly run holds (real files, real processes, no Ray)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest

from raeae.lock import LOCK_FILE, OutputBusyError, OutputLock

FS = pafs.LocalFileSystem()


def lock(tmp_path, run_id, **kw) -> OutputLock:
    return OutputLock(FS, str(tmp_path / "out"), run_id, **{"settle_s": 0.05, **kw})


def stored(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / LOCK_FILE).read_text())


def test_a_second_run_is_refused_while_the_first_holds_the_output_and_takes_it_once_released(tmp_path):
    first = lock(tmp_path, "night-1")
    first.acquire()
    with pytest.raises(OutputBusyError, match=r"another nightly run is writing to this output: run night-1 on "):
        lock(tmp_path, "night-2").acquire()
    first.check()  # refusing the second run leaves the first its lock
    first.release()
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    second = lock(tmp_path, "night-2")
    assert second.acquire() is None  # nothing taken over: the first released it
    assert stored(tmp_path)["run_id"] == "night-2"
    second.release()


def test_the_lock_of_a_process_that_has_ended_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({
        "run_id": "killed", "token": "t", "host": socket.gethostname(), "pid": int(dead.stdout),
        "alive_at": time.time()}))  # refreshed a moment ago, but its process is gone (a kill -9)
    new = lock(tmp_path, "rerun")
    assert new.acquire() == f"the lock of run killed (its process {int(dead.stdout)} on this host has ended)"
    new.release()


def test_a_silent_holder_on_another_host_is_waited_for_until_its_lock_is_stale(tmp_path):
    (tmp_path / "out").mkdir()
    record = {"run_id": "elsewhere", "token": "t", "host": "another-host", "pid": 1, "started_at": "then"}
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({**record, "alive_at": time.time() - 30}))
    with pytest.raises(OutputBusyError, match=r"alive 30 s ago.*its lock expires 90 s from now"):
        lock(tmp_path, "mine", stale_s=120).acquire()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({**record, "alive_at": time.time() - 130}))
    new = lock(tmp_path, "mine", stale_s=120)
    assert new.acquire() == "the lock of run elsewhere (silent for 130 s)"
    new.release()


def test_the_holder_keeps_its_lock_alive(tmp_path):
    held = lock(tmp_path, "long", heartbeat_s=0.1)
    held.acquire()
    first = stored(tmp_path)["alive_at"]
    time.sleep(0.5)
    assert stored(tmp_path)["alive_at"] > first and stored(tmp_path)["pid"] == os.getpid()
    held.release()


def test_of_two_runs_that_start_together_one_goes_on(tmp_path):
    runs = [lock(tmp_path, f"run-{i}", settle_s=0.5) for i in range(2)]
    outcome = {}

    def start(run):
        try:
            run.acquire()
            outcome[run.run_id] = "holds"
        except OutputBusyError:
            outcome[run.run_id] = "refused"

    threads = [threading.Thread(target=start, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["holds", "refused"]
    holder = next(r for r in runs if outcome[r.run_id] == "holds")
    assert stored(tmp_path)["token"] == holder.token
    refused = next(r for r in runs if r is not holder)
    refused.release()  # must not delete the holder's lock
    holder.check()
    holder.release()
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def test_a_run_whose_lock_was_taken_over_may_not_commit(tmp_path):
    stalled = lock(tmp_path, "stalled", stale_s=0.2, heartbeat_s=60)  # no heartbeat in time: as if frozen
    stalled.acquire()
    time.sleep(0.3)
    taker = lock(tmp_path, "taker", stale_s=0.2)
    assert taker.acquire().startswith("the lock of run stalled (silent for")
    with pytest.raises(OutputBusyError, match="run stalled lost its lock on this output while it ran "
                                              r"\(taken over by run taker\); not committed"):
        stalled.check()
    stalled.release()  # leaves the taker's lock alone
    taker.check()
    taker.release()


@pytest.mark.slow
def test_the_lock_works_on_an_s3_output(s3_env):
    """On an object store (SeaweedFS's S3 API): no lock is a missing key, a lock is written whole (a copy
    then a delete: no rename there), refused, and deleted on release."""
    from raeae.storage import StorageConfig, resolve

    s3_env.bucket("locks")
    fs, root = resolve("s3://locks/nightly-out", StorageConfig())
    first = OutputLock(fs, root, "s3-night-1", settle_s=0.05)
    assert first.read() is None and first.acquire() is None
    with pytest.raises(OutputBusyError, match="run s3-night-1"):
        OutputLock(fs, root, "s3-night-2", settle_s=0.05).acquire()
    first.check()
    first.release()
    assert fs.get_file_info(f"{root}/{LOCK_FILE}").type == pafs.FileType.NotFound
    assert [i.path for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))] == []  # no temp files left


def test_archive_is_refused_before_it_trains_when_its_output_is_in_use(tmp_path, capsys):
    """`raeae archive` trains for minutes before its nightly step takes the lock: it asks first."""
    from PIL import Image

    from raeae.cli import main

    (tmp_path / "noisy").mkdir()
    Image.new("L", (32, 32), 128).save(tmp_path / "noisy" / "a.png")
    other = OutputLock(FS, str(tmp_path / "out"), "nightly-cron", settle_s=0.0)
    other.acquire()
    try:
        code = main(["archive", "--archive", str(tmp_path / "noisy"), "--output", str(tmp_path / "out"),
                     "--epochs", "1"])
    finally:
        other.release()
    captured = capsys.readouterr()
    assert code == 2 and "step 1/2" not in captured.out  # no training started
    assert "another nightly run is writing to this output: run nightly-cron" in captured.err
