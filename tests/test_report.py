"""The run report: one HTML file, opened in headless Chromium (no console error, no request to anything
but itself), that shows the counts, the errors by reason, the damage found, a before/after gallery and,
for nightly outputs, the nights; hostile file names are only text."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raeae import checkpoint as ckpt
from raeae.report import REPORT_FILE, error_groups, gallery_paths, report, restore_report, ReportConfig
from raeae.contract import SCHEMA
from raeae.stages import ModelStage, decode_batch, encode_batch
from raeae.storage import StorageConfig

from browser import chromium, visit
from conftest import ROOT, photo, png_bytes
from test_damage import gaussian
from test_impulses import salt_and_pepper

FACTS = """JSON.stringify({
  ok: document.getElementById('count-ok')?.textContent, error: document.getElementById('count-error')?.textContent,
  groups: [...document.querySelectorAll('.error-group')].map(g => [g.querySelector('.count').textContent,
                                                                 g.querySelector('.reason').textContent]),
  gallery: [...document.querySelectorAll('.gallery-item')].map(f => [f.querySelectorAll('img').length,
                                                                      f.querySelector('code').textContent]),
  loadedImages: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
  images: document.images.length, svgs: document.querySelectorAll('svg').length,
  scripts: document.scripts.length, nights: [...document.querySelectorAll('.night')].map(r => r.cells[0].textContent),
  text: document.body.innerText})"""

HOSTILE = ["<script>alert(1)<!--.png", "<img src=x onerror=alert(1)>.png", 'quote"and\'apostrophe.png', "ünïcødé-日本.png", "a&b<i>.png"]


def screenshot(name: str, data: bytes) -> None:
    os.makedirs(ROOT / "runs", exist_ok=True)
    (ROOT / "runs" / f"{name}.png").write_bytes(data)


def stage_output(folder, out) -> None:
    """A restore output written by the stage functions themselves (no Ray): Parquet and no summary."""
    files = sorted(folder.iterdir())
    listing = pa.Table.from_pylist([{"path": str(folder / ".." / folder.name / f.name), "size": f.stat().st_size,
                                     "mtime": f.stat().st_mtime} for f in files])
    model_id = "+".join(ckpt.model_id(b) for b in ckpt.read_models(ckpt.AUTO))
    stage = ModelStage(ckpt.AUTO, model_id, StorageConfig(), stride=0, tile_batch=1024, threads=1)
    rows = encode_batch(stage(decode_batch(listing, str(folder), StorageConfig(), max_pixels=10**7)), 1, SCHEMA)
    out.mkdir()
    pq.write_table(rows, out / "part-0.parquet")


@pytest.fixture(scope="module")
def hostile_output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "in"
    folder.mkdir()
    for i, name in enumerate(HOSTILE):
        (folder / name).write_bytes(png_bytes(gaussian(photo("astronaut.png")[:96, :128], 10 + 10 * i, seed=i)))
    (folder / "dust.png").write_bytes(png_bytes(salt_and_pepper(photo("camera.png")[:96, :128], 0.05)))
    (folder / "<b>broken<b>.png").write_bytes(b"\x89PNG\r\n\x1a\n<script>alert(2)</script>")
    (folder / "empty.png").write_bytes(b"")
    (folder / "empty2.png").write_bytes(b"")
    out = folder.parent / "out"
    stage_output(folder, out)
    return folder, out


def test_the_report_is_one_offline_page_where_hostile_names_are_only_text(hostile_output):
    assert chromium(), "Debian's chromium is needed (.ci/run installs it)"
    folder, out = hostile_output
    path = restore_report(str(out))
    html = open(path, encoding="utf-8").read()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    seen = visit(f"file://{path}", FACTS)
    screenshot("report-hostile-names", seen.screenshot)
    assert seen.console_errors == [] and seen.requests == []
    facts = json.loads(seen.facts)
    assert facts["scripts"] == 0 and (facts["ok"], facts["error"]) == ("6", "3")
    for name in HOSTILE + ["<b>broken<b>.png"]:
        assert name in facts["text"]  # shown as the text it is, never markup
    assert f"{folder.parent}/in/../in/" in facts["text"]  # a path with ../ stays as written
    reasons = dict((r, int(n)) for n, r in facts["groups"])
    assert reasons == {"empty file (N bytes)": 2, next(r for r in reasons if r.startswith("truncated or corrupt PNG")): 1}
    assert len(facts["gallery"]) == 6 and all(n == 2 for n, _ in facts["gallery"])
    assert facts["loadedImages"] == facts["images"] == 12 and facts["svgs"] >= 3


def test_the_gallery_shows_the_most_damaged_of_each_kind_then_the_noisiest_then_some_at_random():
    rows = pa.table({"path": [f"p{i}" for i in range(30)], "status": ["ok"] * 29 + ["error"],
                     "noise_sigma": [float(i) for i in range(30)],
                     "damage": ["noise"] * 20 + ["jpeg"] * 5 + ["impulse"] * 5,
                     "jpeg_quality": [None] * 20 + [50.0, 20.0, 30.0, 90.0, 60.0] + [None] * 5,
                     "impulse_share": [None] * 25 + [0.01, 0.2, 0.05, 0.03, None]})
    chosen = gallery_paths(rows, worst=5, random=3)
    assert chosen[:3] == ["p26", "p21", "p19"]  # most impulses, lowest JPEG quality, most noise (ok rows only)
    assert chosen[3:5] == ["p28", "p27"] and len(chosen) == 8 and len(set(chosen)) == 8 and "p29" not in chosen
    assert gallery_paths(rows, worst=5, random=3) == chosen  # the same each time it is written


def test_errors_group_by_reason_with_their_first_files():
    rows = pa.table({"path": [f"f{i}" for i in range(9)],
                     "error": [None, "empty file (0 bytes)"] + [f"truncated or corrupt PNG file ({n} bytes)" for n in
                                                                 range(7)]})
    groups = error_groups(rows)
    assert [(r, n) for r, n, _ in groups] == [("truncated or corrupt PNG file (N bytes)", 7), ("empty file (N bytes)", 1)]
    assert groups[0][2] == ["f2", "f3", "f4", "f5", "f6"]


def test_raeae_report_writes_it_again_from_the_output_alone(hostile_output, capsys):
    _, out = hostile_output
    (out / REPORT_FILE).unlink(missing_ok=True)
    assert report(ReportConfig(output=str(out))) == [str(out / REPORT_FILE)]
    assert (out / REPORT_FILE).stat().st_size > 10_000 and "raeae report:" in capsys.readouterr().out
    with pytest.raises(Exception, match="no such|required"):
        report(ReportConfig(output=""))


@pytest.mark.slow
def test_a_restore_and_two_nights_report_themselves_and_chromium_shows_them(ray_session, tmp_path, trained_checkpoint):
    from raeae.incremental import NightlyConfig, nightly
    from raeae.restoring import RestoreConfig, restore

    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(4):
        (archive / f"scan{i}.png").write_bytes(png_bytes(gaussian(photo("camera.png")[:64, :80], 20, seed=i)))
    (archive / "cut.png").write_bytes(png_bytes(photo("camera.png")[:64, :64])[:60])
    restore(RestoreConfig(model=str(trained_checkpoint), input=str(archive), output=str(tmp_path / "plain")))
    seen = visit(f"file://{tmp_path / 'plain' / REPORT_FILE}", FACTS)
    screenshot("report-restore", seen.screenshot)
    facts = json.loads(seen.facts)
    assert seen.console_errors == [] and seen.requests == []
    assert (facts["ok"], facts["error"]) == ("4", "1") and len(facts["groups"]) == 1
    assert len(facts["gallery"]) == 4 and facts["loadedImages"] == facts["images"] == 8
    assert str(trained_checkpoint) in facts["text"] and "1 node" in facts["text"]

    out = tmp_path / "nightly"
    cfg = NightlyConfig(model=str(trained_checkpoint), archive=str(archive), output=str(out))
    nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "night1"}))
    (archive / "scan9.png").write_bytes(png_bytes(gaussian(photo("camera.png")[:64, :80], 30, seed=9)))
    nightly(NightlyConfig(**{**cfg.__dict__, "run_id": "night2"}))
    second = json.loads(visit(f"file://{out / '_reports' / 'night2.html'}", FACTS).facts)
    assert (second["ok"], second["error"]) == ("1", "0") and len(second["gallery"]) == 1
    index = visit(f"file://{out / '_reports' / 'index.html'}", FACTS)
    screenshot("report-nightly-index", index.screenshot)
    assert index.console_errors == [] and index.requests == []
    assert json.loads(index.facts)["nights"] == ["night1", "night2"]


def test_progress_counts_images_not_ray_datas_blocks():
    from raeae.cluster import progress_text

    assert progress_text("1/3 [00:05<00:10]", 24) == "~8/24 images (1/3 units)"
    assert progress_text("3/3", 24) == "24/24 images (3/3 units)"
    assert progress_text("5/22", 0) == "5/22 units"
    assert progress_text("garbage", 10) == "garbage"
