"""The restore stages find each file's damage and say so in its row (no Ray: the stage functions on a
folder of real files, with the bundled models)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raeae import checkpoint as ckpt
from raeae.images import decode
from raeae.jpeg import compress
from raeae.contract import SCHEMA
from raeae.stages import ModelStage, decode_batch, encode_batch
from raeae.storage import StorageConfig

from conftest import photo, png_bytes
from test_damage import gaussian
from test_impulses import salt_and_pepper


@pytest.fixture(scope="module")
def damaged_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    colour, gray = photo("astronaut.png")[:160, :192], photo("camera.png")[:160, :192]
    buf = io.BytesIO()
    Image.fromarray(colour).save(buf, format="JPEG", quality=20)
    (d / "a-camera.jpg").write_bytes(buf.getvalue())
    (d / "b-resaved.png").write_bytes(png_bytes(compress(gray, 30)))
    (d / "c-dust.png").write_bytes(png_bytes(salt_and_pepper(colour, 0.05)))
    (d / "d-noisy.png").write_bytes(png_bytes(gaussian(gray, 25)))
    (d / "e-flat.png").write_bytes(png_bytes(np.full((40, 40, 3), 200, np.uint8)))
    (d / "f-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return d


def run_stages(folder, damage: str = "auto") -> list[dict]:
    files = sorted(folder.iterdir())
    listing = pa.Table.from_pylist([{"path": str(f), "size": f.stat().st_size, "mtime": f.stat().st_mtime}
                                    for f in files])
    model_id = "+".join(ckpt.model_id(b) for b in ckpt.read_models(ckpt.AUTO))
    stage = ModelStage(ckpt.AUTO, model_id, StorageConfig(), stride=0, tile_batch=1024, threads=1, damage=damage)
    decoded = decode_batch(listing, str(folder), StorageConfig(), max_pixels=10**7)
    return encode_batch(stage(decoded), png_level=1, schema=SCHEMA).to_pylist()


def test_rows_say_what_damage_was_found_and_where_it_came_from(damaged_folder):
    rows = {r["path"].rsplit("/", 1)[1]: r for r in run_stages(damaged_folder)}
    found = {name: (r["damage"], r["damage_source"]) for name, r in rows.items()}
    assert found == {"a-camera.jpg": ("jpeg", "file"), "b-resaved.png": ("jpeg", "image"),
                     "c-dust.png": ("impulse", "image"), "d-noisy.png": ("noise", "image"),
                     "e-flat.png": ("unknown", "image"), "f-broken.png": (None, None)}
    assert rows["a-camera.jpg"]["jpeg_quality"] == pytest.approx(20, abs=0.5)
    low = ckpt.model_id(ckpt.read_checkpoint_bytes("builtin:jpeg-low"))
    assert rows["a-camera.jpg"]["model_id"] == low and rows["b-resaved.png"]["model_id"] == low  # q20, q30
    assert rows["b-resaved.png"]["jpeg_quality"] == pytest.approx(30, abs=1.5)
    assert rows["c-dust.png"]["impulse_share"] == pytest.approx(0.05, rel=0.3)
    assert rows["d-noisy.png"]["jpeg_quality"] is None and rows["d-noisy.png"]["noise_sigma"] > 20
    assert rows["e-flat.png"]["status"] == "ok"  # not judged: restored as before, and said so
    assert rows["f-broken.png"]["status"] == "error"


def test_the_damage_flag_overrides_detection_for_the_run(damaged_folder):
    rows = {r["path"].rsplit("/", 1)[1]: r for r in run_stages(damaged_folder, "jpeg:50")}
    assert {r["damage"] for r in rows.values() if r["status"] == "ok"} == {"jpeg"}
    assert {r["damage_source"] for r in rows.values() if r["status"] == "ok"} == {"flag"}
    assert rows["d-noisy.png"]["jpeg_quality"] == pytest.approx(50)
    untouched = {r["path"].rsplit("/", 1)[1]: r for r in run_stages(damaged_folder, "none")}
    for name in ("b-resaved.png", "c-dust.png", "d-noisy.png"):
        source = decode((damaged_folder / name).read_bytes())[0]
        assert np.array_equal(decode(untouched[name]["image"])[0], source)
        assert untouched[name]["damage"] == "none" and untouched[name]["noise_sigma"] is None
