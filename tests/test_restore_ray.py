"""Restoring real noisy photographs of mixed sizes through Ray Data, read back by three engines."""

import json
import os

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from raeae.cli import main
from raeae.images import decode
from raeae.metrics import psnr
from raeae.contract import read_restored
from raeae.restoring import RestoreConfig, restore
from raeae.settings import Layout
from tests.conftest import clean_for, png_bytes

pytestmark = pytest.mark.slow


def check_rows(table, noisy_folder, clean_references, prefix=""):
    rows = {os.path.basename(p): r for p, r in zip(table["path"].to_pylist(), table.to_pylist())}
    files = [p for p in noisy_folder.rglob("*") if p.is_file() and p.name != "README.txt"]
    assert len(table) == len(files) == len(rows)
    assert rows["corrupt.png"]["status"] == "error" and "truncated" in rows["corrupt.png"]["error"].lower()
    assert rows["notes.png"]["status"] == "error" and "not a recognised image" in rows["notes.png"]["error"]
    for f in files:
        r = rows[f.name]
        assert r["path"].startswith(prefix)
        if f.name in ("corrupt.png", "notes.png"):
            assert r["image"] is None
            continue
        assert r["status"] == "ok" and r["error"] is None
        noisy = decode(f.read_bytes())[0]
        out = decode(r["image"])[0]
        assert out.shape == noisy.shape
        assert (r["height"], r["width"], r["channels"]) == (noisy.shape[0], noisy.shape[1],
                                                           1 if noisy.ndim == 2 else noisy.shape[2])
        clean = clean_for(clean_references, f.name)
        assert psnr(clean, out) > psnr(clean, noisy) + 2.0, f.name  # clearly less noisy


def test_restore_folder_mixed_sizes_and_bad_files(ray_session, tmp_path, noisy_folder, clean_references,
                                                  trained_checkpoint):
    out = tmp_path / "restored"
    assert main(["restore", "--model", str(trained_checkpoint), "--input", str(noisy_folder),
                 "--output", str(out), "--file-mb", "0.01", "--batch-size", "3"]) == 0
    table = pq.read_table(out)
    check_rows(table, noisy_folder, clean_references)
    assert len(list(out.glob("*.parquet"))) >= 2  # small --file-mb: a file per block
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows"] == summary["files"] == len(table) and summary["errors"] == 2
    assert summary["skipped_files"] == 1  # README.txt: said, not restored
    assert summary["ok"] + summary["errors"] == summary["rows"] and summary["images_per_s"] > 0
    # The contract reads back in DuckDB and Polars too.
    con = duckdb.connect()
    n_ok = con.execute(f"select count(*) from read_parquet('{out}/*.parquet') where status = 'ok'").fetchone()[0]
    assert n_ok == summary["ok"]
    df = pl.read_parquet(f"{out}/*.parquet")
    assert df.height == len(table) and df["model_id"].n_unique() == 1
    assert df.filter(pl.col("status") == "error")["image"].null_count() == 2

    # export mirrors the relative source paths
    exported = tmp_path / "exported"
    assert main(["export", "--input", str(out), "--output", str(exported)]) == 0
    names = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*.png"))
    expected = sorted(p.relative_to(noisy_folder).as_posix() for p in noisy_folder.rglob("*.png")
                      if p.name not in ("corrupt.png", "notes.png"))
    assert names == expected
    assert len(read_restored(str(out))) == len(table)


def test_restore_refuses_a_non_empty_output(ray_session, tmp_path, noisy_folder, trained_checkpoint, capsys):
    (tmp_path / "old.parquet").write_bytes(b"x")
    assert main(["restore", "--model", str(trained_checkpoint), "--input", str(noisy_folder),
                 "--output", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_restore_with_s3_input_and_output(ray_session, s3_env, tmp_path, noisy_folder, clean_references,
                                          trained_checkpoint):
    src = s3_env.bucket("archive")
    s3_env.bucket("results")
    s3_env.upload_dir(noisy_folder, src + "/photos")
    s3_env.upload_dir(trained_checkpoint, "s3://results/model")
    # the staged layout (the default with GPUs; CPU-only runs are fused): decode tasks read from S3
    summary = restore(RestoreConfig(model="s3://results/model", input=src + "/photos",
                                    output="s3://results/run1", layout=Layout.STAGED))
    assert summary["errors"] == 2 and summary["rows"] == summary["files"] and summary["skipped_files"] == 1
    table = read_restored("s3://results/run1")
    check_rows(table, noisy_folder, clean_references, prefix="s3://archive/photos/")


def test_bad_credentials_and_endpoint_fail_with_one_line(s3_env, monkeypatch, capsys, trained_checkpoint):
    s3_env.bucket("creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    assert main(["restore", "--model", str(trained_checkpoint), "--input", "s3://creds/x",
                 "--output", "s3://creds/y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "access denied" in err[0] and "wrong" not in err[0]
    assert main(["restore", "--model", str(trained_checkpoint), "--input", "s3://creds/x",
                 "--output", "s3://creds/y", "--endpoint-url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_evaluate_scores_a_restore_output_against_clean_images(ray_session, tmp_path, noisy_folder, clean_references,
                                                               trained_checkpoint, capsys):
    out = tmp_path / "restored"
    restore(RestoreConfig(model=str(trained_checkpoint), input=str(noisy_folder), output=str(out), batch_size=2))
    assert len(list(out.glob("*.parquet"))) == 1  # many small blocks, gathered into one file
    assert main(["evaluate", "--restored", str(out), "--data", str(clean_references)]) == 0
    table = capsys.readouterr().out
    rows = {l.split("|")[1].strip(): float(l.split("|")[2]) for l in table.splitlines() if l.startswith("| ")
            and l.split("|")[2].strip().replace(".", "").isdigit()}
    assert rows["raeae"] > rows["noisy input"] + 2.0


def test_s3_keys_that_need_url_escaping_restore_and_export_under_their_own_names(ray_session, s3_env):
    """Object keys with '+', '%', '#', '?', spaces and non-ASCII letters: each is a separate object, a
    client that escapes them wrong reads another key or none."""
    import pyarrow.fs as pafs

    from raeae.export import ExportConfig, export

    s3_env.bucket("odd")
    names = ["a+b.png", "100%.png", "a%20b.png", "x#1.png", "q?.png", "é ü.png", "sp ace/c.png"]
    for i, n in enumerate(names):
        s3_env.put(f"odd/in/{n}", png_bytes(np.full((16, 16), 20 * i, np.uint8)))
    summary = restore(RestoreConfig(input="s3://odd/in", output="s3://odd/out"))
    assert summary["ok"] == len(names) == summary["rows"]
    assert export(ExportConfig(input="s3://odd/out", output="s3://odd/png")) == len(names)
    fs = s3_env.fs()
    exported = {i.path[len("odd/png/"):]: i.path for i in fs.get_file_info(pafs.FileSelector("odd/png", recursive=True))
                if i.type == pafs.FileType.File}
    assert sorted(exported) == sorted(names)
    for i, n in enumerate(names):  # each PNG is its own source's, restored (a flat image stays near its level)
        with fs.open_input_stream(exported[n]) as f:
            assert abs(int(decode(f.read())[0].mean()) - 20 * i) <= 3, n
