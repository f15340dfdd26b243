"""`raeae export` on outputs written here without Ray: the latest committed row of each path, streamed."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from raeae.export import ExportConfig, export
from raeae.contract import SCHEMA

from conftest import png_bytes


def png(value: int) -> bytes:
    return png_bytes(np.full((4, 5), value, np.uint8))


def rows(*items: tuple[str, int | None]) -> pa.Table:
    """(source path, grey level of its restored image or None for an error row) -> contract rows."""
    return pa.Table.from_pylist([
        {"path": p, "image": None if v is None else png(v), "status": "error" if v is None else "ok",
         "error": "broken" if v is None else None, "model_id": "m", "restored_at": 0} for p, v in items],
        schema=SCHEMA)


def commit(root, seq: int, run: str, *tables: pa.Table) -> None:
    """A committed nightly run, as raeae.incremental lays it out."""
    files = []
    for i, t in enumerate(tables):
        (root / f"run={run}").mkdir(parents=True, exist_ok=True)
        pq.write_table(t, root / f"run={run}" / f"part-{i}.parquet", row_group_size=2)
        files.append(f"run={run}/part-{i}.parquet")
    (root / "_manifests").mkdir(exist_ok=True)
    (root / "_manifests" / f"{seq:08d}-{run}.json").write_text(json.dumps({"run_id": run, "seq": seq, "files": files}))


def level(path) -> int:
    return int(np.asarray(Image.open(path)).max())


def test_a_nightly_export_writes_each_paths_latest_ok_row_and_nothing_uncommitted(tmp_path, capsys):
    out = tmp_path / "nightly"
    commit(out, 1, "n1", rows(("/a/x.png", 10), ("/a/y.png", 20), ("/a/z.png", 30)),
           rows(("/a/sub/w.jpg", 40), ("/a/bad.png", None)))
    # the second night: x restored again (a new model), y changed and now fails, bad.png fixed
    commit(out, 2, "n2", rows(("/a/x.png", 11), ("/a/y.png", None), ("/a/bad.png", 50)))
    pq.write_table(rows(("/a/x.png", 99)), tmp_path / "stray.parquet")
    (out / "run=n3").mkdir()  # a run killed before its commit: invisible
    (tmp_path / "stray.parquet").rename(out / "run=n3" / "part-0.parquet")
    assert export(ExportConfig(input=str(out), output=str(tmp_path / "png"))) == 4
    got = {p.relative_to(tmp_path / "png").as_posix(): level(p) for p in (tmp_path / "png").rglob("*.png")}
    assert got == {"x.png": 11, "z.png": 30, "sub/w.png": 40, "bad.png": 50}  # y's latest row is an error
    printed = capsys.readouterr().out
    assert "wrote 4 PNG files" in printed and "(1 error rows skipped)" in printed


def test_a_plain_restore_export_reads_its_files_batch_by_batch(tmp_path, monkeypatch):
    import raeae.export

    monkeypatch.setattr(raeae.export, "EXPORT_BATCH", 3)  # several batches per file
    out = tmp_path / "restored"
    out.mkdir()
    pq.write_table(rows(*[(f"/in/{i:02d}.png", i) for i in range(8)], ("/in/broken.png", None)),
                   out / "part-0.parquet", row_group_size=4)
    pq.write_table(rows(("/in/more/a.png", 200)), out / "part-1.parquet")
    assert export(ExportConfig(input=str(out), output=str(tmp_path / "png"))) == 9
    assert level(tmp_path / "png" / "07.png") == 7 and level(tmp_path / "png" / "more" / "a.png") == 200
    assert not (tmp_path / "png" / "broken.png").exists()
