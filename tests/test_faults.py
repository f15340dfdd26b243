"""Fault injection: faults cost time, never rows."""

import os
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from raeae.cli import main
from raeae.corrupt import NoiseConfig
from raeae.images import decode
from raeae.model import ModelConfig
from raeae.contract import read_restored
from raeae.incremental import NightlyConfig, nightly
from raeae.training import train
from raeae.train_config import TrainConfig
from tests.catalogue import write_catalogue
from tests.test_data import write_mnist

pytestmark = pytest.mark.slow


def _kill_a_train_worker_after_first_checkpoint(run_dir, killed: list, stop: threading.Event):
    while not stop.is_set():
        # The controller writes this snapshot once it has registered a reported checkpoint.
        if (run_dir / "checkpoint_manager_snapshot.json").exists():
            time.sleep(0.3)  # now mid-epoch 2
            # only this test's own Ray's workers (the pytest process started that Ray): never a training
            # run of someone else's on the same machine (one such kill cost a release run its worker)
            for p in psutil.Process().children(recursive=True):
                try:
                    cmdline = p.cmdline()
                except psutil.Error:
                    continue
                if any("RayTrainWorker" in c for c in cmdline):
                    p.kill()  # SIGKILL, mid-epoch 2
                    killed.append(p.pid)
                    return
        time.sleep(0.05)


def test_training_survives_a_killed_worker_and_resumes_from_its_checkpoint(ray_session, tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    write_mnist(data, n=12000, size=12)
    cfg = TrainConfig(data=str(data), output=str(tmp_path / "best"), workers=2, epochs=4, batch_size=8,
                      model=ModelConfig(patch_size=12, hidden=(64,), latent=32, decoder_hidden=(64,)),
                      noise=NoiseConfig(sigma=30), storage_path=str(tmp_path / "ray"), run_name="faulty",
                      patience=0, failures=2)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_train_worker_after_first_checkpoint,
                              args=(tmp_path / "ray" / "faulty", killed, stop))
    killer.start()
    try:
        result = train(cfg)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]  # each epoch once
    assert len(result.resumed_at) == 1 and result.resumed_at[0] >= 1  # restarted from a checkpoint, not epoch 0


def test_bad_input_catalogue_gives_a_row_per_file(ray_session, tmp_path, trained_checkpoint):
    src = tmp_path / "catalogue"
    expected = write_catalogue(src, max_pixels=1_000_000)
    out = tmp_path / "out"
    assert main(["restore", "--model", str(trained_checkpoint), "--input", str(src), "--output", str(out),
                 "--max-pixels", "1000000"]) == 0
    table = read_restored(str(out))
    rows = {os.path.relpath(r["path"], src): r for r in table.to_pylist()}
    assert set(rows) == set(expected) and len(table) == len(expected)
    for name, (status, what) in expected.items():
        r = rows[name]
        assert r["status"] == status, (name, r["error"])
        if status == "error":
            assert what in r["error"].lower(), (name, r["error"])
            assert r["image"] is None
        else:
            img = decode(r["image"])[0]
            h, w, c = what
            assert (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2]) == (h, w, c), name
            assert (r["height"], r["width"], r["channels"]) == (h, w, c)
            assert r["bits"] == (16 if name in ("gray16.png", "master48.tif") else 8), name


def test_export_cannot_write_outside_its_folder():
    from raeae.export import export_names, safe_relative

    assert safe_relative("/data/x/../../etc/passwd", "/data/x") == "__/__/etc/passwd"
    assert safe_relative("/etc/passwd", "/data/x") == "etc/passwd"
    names = export_names(["s3://b/a/x.png", "s3://b/a/y/../../../evil.png"])
    assert all(".." not in n.split("/") and not n.startswith("/") for n in names.values())
    assert len(set(names.values())) == 2


def test_no_credentials_in_outputs_or_logs(s3_env, tmp_path, trained_checkpoint, noisy_folder, capfd):
    s3_env.bucket("secure")
    s3_env.upload_dir(noisy_folder, "s3://secure/in")
    nightly(NightlyConfig(model=str(trained_checkpoint), archive="s3://secure/in", output="s3://secure/out",
                          run_id="s1"))
    secret = s3_env.env()["AWS_SECRET_ACCESS_KEY"]
    key = s3_env.env()["AWS_ACCESS_KEY_ID"]
    fs = s3_env.fs()
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector("secure/out", recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                data = f.read()
            assert secret.encode() not in data and key.encode() not in data, info.path
            if info.path.endswith(".parquet"):
                md = pq.read_metadata(fs.open_input_file(info.path))
                assert secret not in str(md.metadata)
    out, err = capfd.readouterr()
    assert secret not in out + err and key not in out + err


def test_bad_checkpoint_commits_nothing(tmp_path, noisy_folder, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"\x80\x04not really")
    assert main(["nightly", "--model", str(tmp_path / "ckpt"), "--archive", str(noisy_folder),
                 "--output", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
