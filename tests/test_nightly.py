"""Nightly runs: incremental, exactly once, and safe to kill at any point."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raeae.contract import read_restored

from raeae.incremental import NightlyConfig, nightly


def make_archive(folder, names, seed=0, size=(40, 52)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in names:
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / n)


@pytest.mark.slow
def test_three_nights_restore_new_and_changed_exactly_once(ray_session, tmp_path, trained_checkpoint):
    archive, out = tmp_path / "archive", tmp_path / "out"
    make_archive(archive, [f"a{i}.png" for i in range(6)])
    cfg = NightlyConfig(model=str(trained_checkpoint), archive=str(archive), output=str(out))
    night1 = nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "n1"}))
    assert night1["inputs_restored"] == 6 and night1["rows"] == 6
    make_archive(archive, ["b0.png", "b1.png"], seed=1)
    time.sleep(0.01)
    make_archive(archive, ["a3.png"], seed=2, size=(44, 30))  # changed: new size and mtime
    night2 = nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "n2"}))
    assert night2["inputs_restored"] == 3
    (archive / "a0.png").unlink()  # gone from the archive: its restored row stays, and the run says so
    night3 = nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "n3"}))
    assert night3["inputs_restored"] == 0 and night3["inputs_gone"] == 1
    assert nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "n2"}))["seq"] == night2["seq"]  # committed: no-op
    table = read_restored(str(out))
    assert len(table) == 8 and len(set(table["path"].to_pylist())) == 8
    a3 = [r for r in table.to_pylist() if r["path"] == str(archive / "a3.png")]
    assert len(a3) == 1 and (a3[0]["height"], a3[0]["width"]) == (44, 30)
    again = nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "n4", "reprocess": True}))
    assert again["inputs_restored"] == 7 and len(read_restored(str(out))) == 8


def run_nightly_cli(archive, out, model, run_id):
    return subprocess.Popen([sys.executable, "-m", "raeae.cli", "nightly", "--model", str(model), "--archive",
                             str(archive), "--output", str(out), "--run-id", run_id],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [4.0, 12.0, 20.0])
def test_killed_run_then_rerun_equals_an_unbroken_run(tmp_path, trained_checkpoint, kill_after_s):
    archive = tmp_path / "archive"
    make_archive(archive, [f"img{i:03d}.png" for i in range(24)], size=(120, 90))
    out = tmp_path / "out"
    proc = run_nightly_cli(archive, out, trained_checkpoint, "crash")
    try:
        proc.wait(timeout=kill_after_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
        proc.wait()
    left_locked = (out / "_lock.json").exists()  # a kill mid-run leaves the output's lock behind
    # Whatever state the kill left, the next run completes the work exactly once.
    rerun = run_nightly_cli(archive, out, trained_checkpoint, "rerun")
    log = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, log[-3000:]
    # ... and the re-run takes it over at once: its holder's process has ended (raeae.lock)
    assert ("took over the lock of run crash (its process" in log) == left_locked, log[-3000:]
    assert not (out / "_lock.json").exists()
    table = read_restored(str(out))
    paths = table["path"].to_pylist()
    assert len(paths) == 24 and len(set(paths)) == 24
    assert set(table["status"].to_pylist()) == {"ok"}
    committed_rows = sum(1 for _ in paths)
    assert committed_rows == 24


def test_paths_gone_from_the_archive_are_found_from_the_committed_rows():
    from raeae.incremental import gone_from_archive
    from raeae.contract import SCHEMA

    state = pa.Table.from_pylist([{"path": p, "status": "ok", "model_id": "m", "restored_at": 0}
                                  for p in ["s3://a/x.png", "s3://a/y.png", "s3://a/x.png", "s3://a/z.png"]],
                                 schema=SCHEMA)
    assert gone_from_archive([{"path": "s3://a/y.png"}, {"path": "s3://a/new.png"}], state) == ["s3://a/x.png",
                                                                                               "s3://a/z.png"]
    assert gone_from_archive([], SCHEMA.empty_table()) == []


def test_a_second_nightly_on_an_output_in_use_is_refused_before_it_touches_anything(tmp_path, capsys):
    """One writer per output (raeae.lock): a run that finds another one's live lock stops with one line,
    before Ray starts and before it deletes any uncommitted run folder (which would be the other's)."""
    import pyarrow.fs as pafs

    from raeae.cli import main
    from raeae.lock import OutputLock

    make_archive(tmp_path / "archive", ["a.png"])
    out = tmp_path / "out"
    (out / "run=working").mkdir(parents=True)  # the other run's files, not yet committed
    other = OutputLock(pafs.LocalFileSystem(), str(out), "working", settle_s=0.0)
    other.acquire()
    try:
        code = main(["nightly", "--model", "builtin:gray", "--archive", str(tmp_path / "archive"),
                     "--output", str(out), "--run-id", "second"])
    finally:
        other.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another nightly run is writing to this output: run working" in err[0]
    assert (out / "run=working").is_dir() and not (out / "_manifests").exists()
