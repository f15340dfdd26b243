"""The restore pipeline's stages as pure functions, without Ray: decode -> model -> encode keeps one row
per file, turns any failure into that file's error row, and restores exactly what restore_image does."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

import raeae
from raeae.images import decode, decode_image, encode_png
from raeae.inference import restore_array, restore_arrays
from raeae.model import ColorMode, ModelConfig, build_model
from raeae.contract import SCHEMA
from raeae.settings import Layout
from raeae.stages import DECODED, ModelStage, decode_batch, encode_batch
from raeae.storage import StorageConfig

from conftest import photo, png_bytes


def small_model(channels: int = 1, color: ColorMode = ColorMode.OPPONENT) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(patch_size=6, channels=channels, hidden=(32,), latent=16, decoder_hidden=(32,),
                                   residual=True, color=color)).eval()


def mixed_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(5, 7), (28, 28), (64, 40, 3), (1, 1), (30, 33, 4), (17, 9, 2), (200, 150)]
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]


@pytest.mark.parametrize("channels", [1, 3])
def test_packed_restore_equals_one_image_at_a_time(channels):
    model = small_model(channels)
    images = mixed_images()
    packed = restore_arrays(model, images, stride=3, pack_tiles=500)  # several packs, one image alone
    for image, out in zip(images, packed):
        alone = restore_array(model, image, stride=3)
        assert out.shape == image.shape and out.dtype == np.uint8
        # the same sums in a different matrix shape: equal up to float rounding at the 0.5 boundary
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 1
        assert (out == alone).mean() > 0.99


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_gray_is_restored_at_16_bits_like_its_8_bit_reading(channels):
    model = small_model(channels)
    gray8 = photo("camera.png")[:40, :50]
    gray16 = gray8.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 257, gray8.shape).astype(np.uint16)
    out16, out8 = restore_arrays(model, [gray16, gray8], stride=3)
    assert out16.dtype == np.uint16 and out16.shape == gray16.shape and out8.dtype == np.uint8
    assert np.abs(out16 / 257.0 - out8).max() <= 2  # the same restoration, kept at 16 bits
    assert len(np.unique(out16 % 257)) > 100  # and it uses the levels between the 8-bit ones
    with pytest.raises(TypeError, match="uint8 or uint16"):
        restore_array(model, gray8.astype(np.float32))


def netpbm(image: np.ndarray) -> bytes:
    """A binary PGM or PPM of maxval 65535 (what a raw converter's 16-bit output is)."""
    h, w = image.shape[:2]
    return f"P{6 if image.ndim == 3 else 5}\n{w} {h}\n65535\n".encode() + image.astype(">u2").tobytes()


def jpeg2k(image: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg2k_encode(image, level=0)  # lossless


@pytest.mark.parametrize("colour, suffix, write", [(False, "png", encode_png), (True, "png", encode_png),
                                                   (True, "jp2", jpeg2k), (True, "ppm", netpbm),
                                                   (False, "pgm", netpbm)])
def test_a_16_bit_scan_comes_out_a_16_bit_png(tmp_path, trained_checkpoint, colour, suffix, write):
    gray = photo("camera.png")[:30, :40].astype(np.uint16) * 257
    scan = np.dstack([gray, 65535 - gray, gray // 2]) if colour else gray  # a 48-bit colour master, or 16-bit gray
    (tmp_path / f"scan.{suffix}").write_bytes(write(scan))
    decoded = decode_batch(listing(tmp_path), str(tmp_path), StorageConfig(), max_pixels=10**6)
    assert decoded.column("bits").to_pylist() == [16]
    stage = ModelStage(str(trained_checkpoint), raeae_model_id(trained_checkpoint), StorageConfig(), stride=0,
                       tile_batch=64, threads=1)
    row = encode_batch(stage(decoded), png_level=1, schema=SCHEMA).to_pylist()[0]
    out, mode, _ = decode_image(row["image"])
    assert row["status"] == "ok" and row["source_mode"] == mode == ("RGB;16" if colour else "I;16")
    assert row["bits"] == 16 and out.dtype == np.uint16 and out.shape == scan.shape
    alone = restore_array(raeae.load_model(str(trained_checkpoint)), scan, stride=4)
    assert np.array_equal(out, alone)


def test_opponent_colour_model_shares_the_gray_network():
    gray = small_model(1)
    colour = build_model(replace(gray.config, channels=3, color=ColorMode.OPPONENT))
    colour.load_state_dict(gray.state_dict())  # the same weights: the plane network is the gray network
    x = torch.rand(5, 3 * 36)
    y = colour(x)
    assert y.shape == x.shape
    # a gray patch (R=G=B) has flat chroma planes at 0.5: luma is restored by the gray net alone
    g = torch.rand(4, 36)
    out = colour(g.repeat(1, 3)).reshape(4, 3, 36)
    luma = gray(g)
    chroma = gray(torch.full_like(g, 0.5)) - 0.5  # what the net does to a flat 0.5 plane, as a signed offset
    # R = Y + U + 2/3 V for Y = (R+G+B)/3, U = (R-B)/2, V = (R-2G+B)/4
    assert torch.allclose(colour.from_planes[0], torch.tensor([1.0, 1.0, 2 / 3]), atol=1e-6)
    assert torch.allclose(out[:, 0], luma + chroma * (1 + 2 / 3), atol=1e-5)


def test_joint_colour_checkpoints_from_before_colour_modes_still_load():
    cfg = ModelConfig(patch_size=6, channels=3, color=ColorMode.JOINT)
    d = cfg.to_dict()
    del d["color"]
    assert ModelConfig.from_dict(d).color is ColorMode.JOINT
    assert build_model(ModelConfig.from_dict(d)).encoder[0].in_features == 108


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "gray.png").write_bytes(png_bytes(photo("camera.png")[:40, :50]))
    (tmp_path / "rgb.png").write_bytes(png_bytes(photo("astronaut.png")[:30, :20]))
    (tmp_path / "tiny.png").write_bytes(png_bytes(np.full((1, 1), 7, np.uint8)))
    good = png_bytes(np.zeros((16, 16), np.uint8))
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path


def listing(folder) -> pa.Table:
    files = sorted(folder.iterdir())
    return pa.Table.from_pylist([{"path": str(f), "size": f.stat().st_size, "mtime": f.stat().st_mtime}
                                 for f in files])


def test_stages_end_to_end_without_ray(folder, trained_checkpoint):
    decoded = decode_batch(listing(folder), str(folder), StorageConfig(), max_pixels=10**6)
    assert decoded.schema == DECODED and decoded.num_rows == 5
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in decoded.to_pylist() if r["error"]}
    assert set(errors) == {"truncated.png", "empty.png"} and all(errors.values())

    stage = ModelStage(str(trained_checkpoint), raeae_model_id(trained_checkpoint), StorageConfig(), stride=0,
                       tile_batch=64, threads=1)
    restored = stage(decoded)
    assert restored.num_rows == 5 and restored.column("error").to_pylist() == decoded.column("error").to_pylist()
    rows = encode_batch(restored, png_level=1, schema=SCHEMA).to_pylist()
    assert [r["status"] for r in rows] == ["error" if r["path"].endswith(("truncated.png", "empty.png")) else "ok"
                                           for r in rows]
    model = raeae.load_model(str(trained_checkpoint))
    for r in rows:
        assert r["seconds"] == pytest.approx(r["decode_s"] + r["restore_s"] + r["encode_s"], rel=1e-4)
        if r["status"] != "ok":
            assert r["image"] is None and r["error"]
            continue
        noisy = decode(open(r["path"], "rb").read())[0]
        out = decode(r["image"])[0]
        alone = restore_array(model, noisy, stride=4)  # the checkpoint's recommended stride
        assert out.shape == noisy.shape and np.abs(out.astype(int) - alone.astype(int)).max() <= 1
        assert 0 <= r["forward_s"] <= r["restore_s"]


def test_model_stage_turns_a_failing_image_into_its_own_error_row(folder, trained_checkpoint):
    decoded = decode_batch(listing(folder), str(folder), StorageConfig(), max_pixels=10**6)
    rows = decoded.to_pylist()
    bad = next(i for i, r in enumerate(rows) if r["error"] is None)
    stage = ModelStage(str(trained_checkpoint), raeae_model_id(trained_checkpoint), StorageConfig(), stride=0,
                       tile_batch=64, threads=1)
    rows[bad]["pixels"] = rows[bad]["pixels"][:-1]  # bytes that no longer match the shape
    other = next(i for i, r in enumerate(rows) if r["error"] is None and i != bad)
    rows[other]["pixels"], rows[other]["height"], rows[other]["width"] = b"", 0, 0  # no pixels at all
    out = stage(pa.Table.from_pylist(rows, schema=DECODED)).to_pylist()
    assert out[bad]["error"] and out[other]["error"]
    assert sum(r["error"] is None for r in out) == 1  # the remaining good image still restored


def test_fused_stage_gives_the_staged_rows_and_a_missing_file_keeps_its_place(folder, trained_checkpoint):
    from raeae.stages import FusedStage

    table = listing(folder)
    rows = table.to_pylist()
    rows.insert(2, {"path": str(folder / "gone.png"), "size": 10, "mtime": 0.0})  # listed, then deleted
    table = pa.Table.from_pylist(rows, schema=table.schema)
    decode_kwargs = {"input_uri": str(folder), "storage": StorageConfig(), "max_pixels": 10**6}
    model_kwargs = {"model": str(trained_checkpoint), "model_id": raeae_model_id(trained_checkpoint),
                    "storage": StorageConfig(), "stride": 0, "tile_batch": 64, "threads": 1}
    fused = FusedStage(decode_kwargs, {"png_level": 1, "schema": SCHEMA}, **model_kwargs)(table)
    staged = encode_batch(ModelStage(**model_kwargs)(decode_batch(table, **decode_kwargs)), png_level=1,
                          schema=SCHEMA)
    assert fused.schema == SCHEMA
    same = ["path", "image", "width", "height", "channels", "source_mode", "status", "error", "model_id"]
    assert fused.select(same).to_pylist() == staged.select(same).to_pylist()
    out = fused.to_pylist()
    assert [r["path"] for r in out] == [r["path"] for r in rows]  # read concurrently, kept in order
    assert out[2]["status"] == "error" and "gone.png" in out[2]["error"]
    assert sum(r["status"] == "ok" for r in out) == 3


@pytest.mark.parametrize("copy_metadata", [True, False])
def test_restored_pngs_keep_the_sources_orientation_profile_and_dpi_unless_told_not_to(tmp_path, trained_checkpoint,
                                                                                       copy_metadata):
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation: stored on its side
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut.png")[:24, :40]).save(buf, "JPEG", exif=exif.tobytes(), icc_profile=icc,
                                                           dpi=(600, 600))
    (tmp_path / "scan.jpg").write_bytes(buf.getvalue())
    (tmp_path / "plain.png").write_bytes(png_bytes(photo("camera.png")[:20, :20]))
    decoded = decode_batch(listing(tmp_path), str(tmp_path), StorageConfig(), max_pixels=10**6,
                           copy_metadata=copy_metadata)
    stage = ModelStage(str(trained_checkpoint), raeae_model_id(trained_checkpoint), StorageConfig(), stride=0,
                       tile_batch=64, threads=1)
    rows = {r["path"].rsplit("/", 1)[1]: r for r in encode_batch(stage(decoded), png_level=1, schema=SCHEMA).to_pylist()}
    scan, plain = Image.open(io.BytesIO(rows["scan.jpg"]["image"])), Image.open(io.BytesIO(rows["plain.png"]["image"]))
    assert rows["scan.jpg"]["status"] == "ok" and scan.size == (40, 24)
    if copy_metadata:
        assert scan.getexif()[0x0112] == 8 and scan.info["icc_profile"] == icc
        assert scan.info["dpi"] == pytest.approx((600, 600), abs=0.1)
    else:
        assert not scan.info and not scan.getexif()
    assert not plain.info  # a source without metadata gains none


def raeae_model_id(path) -> str:
    from raeae import checkpoint as ckpt

    return "+".join(ckpt.model_id(b) for b in ckpt.read_models(str(path)))


def test_work_units_cut_the_largest_first_by_count_and_bytes():
    from raeae.restoring import work_units

    files = [{"path": f"f{i}", "size": s} for i, s in enumerate([5, 900, 40, 40, 3000, 1, 1, 1, 1, 1])]
    units = work_units(files, batch_size=3, unit_bytes=1000)
    assert sorted(f["path"] for u in units for f in u) == sorted(f["path"] for f in files)  # each once
    assert [f["size"] for u in units for f in u] == sorted((f["size"] for f in files), reverse=True)
    assert all(len(u) <= 3 for u in units)
    assert all(sum(f["size"] for f in u) <= 1000 or len(u) == 1 for u in units)
    assert [len(u) for u in units] == [1, 3, 3, 3]  # 3000 alone (over the bytes), then by count


def test_work_units_shrink_toward_the_end_so_the_actors_finish_together():
    from raeae.restoring import work_units

    files = [{"path": f"f{i}", "size": 100} for i in range(256)]
    units = work_units(files, batch_size=256, workers=2, unit_bytes=1600, min_bytes=100)
    sizes = [sum(f["size"] for f in u) for u in units]
    assert sorted(f["path"] for u in units for f in u) == sorted(f["path"] for f in files)  # each once
    assert sizes[0] == 1600  # a full unit while much is left
    assert sizes == sorted(sizes, reverse=True)  # never larger later
    assert sizes[-3:] == [100, 100, 100]  # the tail: one file each (the floor)
    # one worker: a unit may be twice as large at the same point of the list
    assert len(work_units(files, 256, workers=1, unit_bytes=1600, min_bytes=100)) < len(units)


@pytest.mark.parametrize("nodes,kw,expect", [
    # 2 CPUs: one fused 1-thread actor per CPU, half a CPU each, the write tasks in the rest
    ([{"CPU": 2.0}], {}, (2, 0.5, 0.0, 1, 0.25, True)),
    # the staged layout asked for on CPUs: the same actors, decode/encode tasks beside them
    ([{"CPU": 2.0}], {"layout": Layout.STAGED}, (2, 0.5, 0.0, 1, 0.25, False)),
    # two 8-CPU nodes: 16 actors, at most 8 a node
    ([{"CPU": 8.0}, {"CPU": 8.0}], {}, (16, 0.5, 0.0, 1, 1.0, True)),
    # a GPU node: one actor per GPU, staged so the GPU never waits for decoding
    ([{"CPU": 16.0, "GPU": 2.0}], {"gpu": True}, (2, 1.0, 1.0, 1, 1.0, False)),
    # ... unless fused is asked for
    ([{"CPU": 16.0, "GPU": 2.0}], {"gpu": True, "layout": Layout.FUSED}, (2, 1.0, 1.0, 1, 1.0, True)),
    # explicit --actors: one actor with all the cores
    ([{"CPU": 4.0}], {"actors": 1}, (1, 2.0, 0.0, 4, 0.5, True)),
])
def test_stage_plan_follows_the_cluster(nodes, kw, expect):
    from raeae.restoring import Plan, RestoreConfig, plan_stages

    plan = plan_stages(RestoreConfig(**kw), nodes, batches=100)
    assert (plan.actors, plan.actor_cpus, plan.actor_gpus, plan.threads, plan.task_cpus, plan.fused) == expect
    assert isinstance(plan, Plan)


def test_stage_plan_never_starts_more_actors_than_units_nor_a_gpu_actor_without_gpus():
    from raeae.restoring import RestoreConfig, plan_stages, wanted_actors

    assert plan_stages(RestoreConfig(), [{"CPU": 8.0}], batches=3).actors == 3
    with pytest.raises(ValueError, match="no GPUs"):
        plan_stages(RestoreConfig(gpu=True), [{"CPU": 8.0}], batches=3)
    # run_pipeline asks wanted_actors first (to size the work units): it refuses before any work is cut
    with pytest.raises(ValueError, match="no GPUs"):
        wanted_actors(RestoreConfig(gpu=True, actors=2), [{"CPU": 8.0}])
    assert wanted_actors(RestoreConfig(gpu=True), [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 2.0}]) == 3
    # a joined cluster may add GPU nodes (cluster.yaml's start at zero): --actors, or one, and Ray waits for them
    head_only = [{"CPU": 0.0}]
    assert wanted_actors(RestoreConfig(gpu=True), head_only, can_grow=True) == 1
    assert wanted_actors(RestoreConfig(gpu=True, actors=4), head_only, can_grow=True) == 4
    plan = plan_stages(RestoreConfig(gpu=True), head_only, batches=3, can_grow=True)
    assert (plan.actors, plan.actor_gpus, plan.fused) == (1, 1.0, False)
    assert wanted_actors(RestoreConfig(), [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]) == 12


def test_rows_record_the_noise_level_the_model_was_told(tmp_path, trained_checkpoint):
    from raeae.corrupt import NoiseConfig
    from raeae.evaluate import make_noisy

    for i, name in enumerate(("camera.png", "astronaut.png")):
        (tmp_path / name).write_bytes(png_bytes(make_noisy(photo(name)[:96, :96], NoiseConfig(sigma=25), i)))
    (tmp_path / "empty.png").write_bytes(b"")
    kwargs = {"storage": StorageConfig(), "stride": 0, "tile_batch": 4096, "threads": 1}
    decoded = decode_batch(listing(tmp_path), str(tmp_path), StorageConfig(), max_pixels=10**6)

    def sigmas(model: str, **extra) -> dict:
        rows = encode_batch(ModelStage(model, raeae_model_id(model), **kwargs, **extra)(decoded), png_level=1,
                            schema=SCHEMA).to_pylist()
        return {r["path"].rsplit("/", 1)[1]: r["noise_sigma"] for r in rows}

    # the bundled blind models take the noise level: each image's own estimate, then a given one
    estimated = sigmas("builtin:auto")
    assert estimated["empty.png"] is None
    assert estimated["camera.png"] == pytest.approx(25, abs=3) and estimated["astronaut.png"] == pytest.approx(25, abs=3)
    assert sigmas("builtin:auto", noise_level=40.0) == {"camera.png": 40.0, "astronaut.png": 40.0, "empty.png": None}
    # a model that takes no noise level is told none
    assert set(sigmas(str(trained_checkpoint)).values()) == {None}


def test_outputs_written_before_a_column_was_added_read_it_as_null(tmp_path):
    import json

    import pyarrow.parquet as pq

    from raeae.contract import MANIFESTS, read_restored

    old_schema = pa.schema([f for f in SCHEMA if f.name not in ("noise_sigma", "bits")])  # the contract before them
    row = {"path": "/a.png", "status": "ok", "model_id": "m", "restored_at": 0}
    plain, nightly = tmp_path / "plain", tmp_path / "nightly"
    plain.mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), plain / "part-0.parquet")
    (nightly / "run=n1").mkdir(parents=True)
    (nightly / MANIFESTS).mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), nightly / "run=n1" / "part-0.parquet")
    (nightly / MANIFESTS / "1-n1.json").write_text(json.dumps({"seq": 1, "files": ["run=n1/part-0.parquet"]}))
    for out in (plain, nightly):
        table = read_restored(str(out))
        assert table.schema == SCHEMA and table["noise_sigma"].to_pylist() == table["bits"].to_pylist() == [None]
        assert read_restored(str(out), columns=["path", "noise_sigma"]).to_pylist() == [
            {"path": "/a.png", "noise_sigma": None}]


def test_parquet_files_are_large_for_a_large_collection_and_a_quarter_of_a_small_one(capsys):
    from raeae.restoring import FILE_BYTES, MIN_FILE_BYTES, RestoreConfig, _file_bytes

    MB, node = 2**20, [{"CPU": 2.0, "object_store_memory": 8 * 2**30}]
    # by default: 128 MB files for a large collection, so a 10 GB one makes ~80 files, not thousands
    assert _file_bytes(RestoreConfig(), node, 10 * 2**30) == FILE_BYTES == 128 * MB
    # a 31 MB collection gathers a quarter of its bytes per file: the first write starts mid-run
    assert _file_bytes(RestoreConfig(), node, 31 * MB) == 31 * MB // 4
    assert _file_bytes(RestoreConfig(), node, 1000) == MIN_FILE_BYTES  # one image: one file
    # a small object store caps the default quietly (nobody asked for a size) ...
    assert _file_bytes(RestoreConfig(), [{"object_store_memory": 80 * MB}], 10 * 2**30) == 10 * MB
    assert capsys.readouterr().out == ""
    # ... and an explicit --file-mb is taken as given, capped with a note
    assert _file_bytes(RestoreConfig(file_mb=3), node, 10 * 2**30) == 3 * MB
    assert _file_bytes(RestoreConfig(file_mb=1000), [{"object_store_memory": 80 * MB}], 31 * MB) == 10 * MB
    assert "not --file-mb 1000" in capsys.readouterr().out
    with pytest.raises(ValueError, match="file_mb must be >= 0"):
        RestoreConfig(file_mb=-1)


def test_gpu_actors_on_a_cluster_without_gpus_name_the_flag(monkeypatch, capsys):
    import raeae.cluster
    from raeae.restoring import RestoreConfig, plan_stages, require_actors

    head_only = [{"CPU": 0.0}]
    plan = plan_stages(RestoreConfig(gpu=True, actors=2), head_only, batches=3, can_grow=True)
    monkeypatch.setattr(raeae.cluster, "_private_local", False)  # joined: say what it waits for
    require_actors(plan, head_only)
    assert "2 model actor(s) x 0.5 CPU + 1 GPU do not fit" in capsys.readouterr().out
    monkeypatch.setattr(raeae.cluster, "_private_local", True)  # this machine's own Ray: an error
    with pytest.raises(ValueError, match="drop --gpu"):
        require_actors(plan, head_only)
