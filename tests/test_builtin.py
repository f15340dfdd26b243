"""The bundled models: they load by name, restore well above the noisy input, say where they came
from, fit the size budget, the colour model beats the gray one channel by channel on colour photos,
and `raeae restore` with no --model sends each image to the right one."""

import os
import shlex
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import raeae
from raeae import checkpoint as ckpt
from raeae.corrupt import Noise, NoiseConfig
from raeae.evaluate import make_noisy
from raeae.metrics import psnr
from raeae.release import JPEG_QUALITIES
from tests.conftest import ROOT, photo

NAMES = ("gray", "color", "jpeg", "jpeg-low")
NOISE_MODELS = ("gray", "color")


def test_bundled_models_fit_the_budget_in_half_precision():
    files = [ckpt.BUILTIN_DIR / f"{n}.pt" for n in NAMES]
    assert all(f.is_file() for f in files), files
    assert sum(f.stat().st_size for f in files) <= 16 * 2**20
    for f in files:
        state = torch.load(f, weights_only=True)
        assert {v.dtype for v in state["model"].values()} == {torch.float16}


@pytest.mark.parametrize("name", NAMES)
def test_bundled_model_carries_its_provenance(name):
    state, _ = ckpt.load_state(f"builtin:{name}")
    p = state["provenance"]
    assert "raeae train" in p["command"] and len(p["commit"]) == 40 and p["train_minutes"] > 0
    assert p["train_data"] and p["test_data"]
    if name.startswith("jpeg"):  # measured on JPEGs of the test set at the qualities it learnt, told them
        lo, hi = ckpt.model_from_state(state).jpeg_qualities
        assert set(p["psnr_db"]) == {f"jpeg {q}" for q in JPEG_QUALITIES if lo <= q <= hi}
        assert all(v["model"] > v["noisy"] + 0.4 for v in p["psnr_db"].values())
    else:
        assert set(p["psnr_db"]) == {"15", "25", "50"}
        assert all(v["model"] > v["noisy"] + 3 for v in p["psnr_db"].values())


def test_each_bundled_model_comes_from_a_command_of_the_release_script_that_still_parses():
    """bench/release_models.sh is the record of how the bundled models were made: the command in each
    model's provenance is one of its steps, and every step is a valid `raeae train` today."""
    from raeae.cli import build_parser, train_config_from_args

    r = subprocess.run(["bash", "bench/release_models.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RELEASE_DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    commands = [line.removeprefix("train: ") for line in r.stdout.splitlines()]
    assert len(commands) >= 4 and all(c.startswith(".venv/bin/raeae train ") for c in commands), r.stdout
    for command in commands:
        _, cfg = train_config_from_args(build_parser(only="train").parse_args(shlex.split(command)[1:]))
        if cfg.noise.noise is Noise.JPEG:  # the JPEG models: told the damage; all qualities with noise before
            assert cfg.model.jpeg_input and cfg.model.noise_input  # compression, or low qualities without
            assert ((cfg.noise.quality, cfg.noise.quality_max) in ((10, 95), (50, 95)) and cfg.noise.noise_share > 0) \
                or ((cfg.noise.quality, cfg.noise.quality_max) == (10, 50) and cfg.noise.noise_share == 0)
        else:  # every noise model is blind over σ 0-55
            assert (cfg.noise.sigma, cfg.noise.sigma_max) == (0, 55)
    for name in NAMES:
        assert ckpt.load_state(f"builtin:{name}")[0]["provenance"]["command"] in commands


@pytest.mark.parametrize("name,image,sigma", [("gray", "camera.png", 25), ("gray", "coins.png", 50),
                                              ("gray", "astronaut.png", 25), ("gray", "coffee.png", 15),
                                              ("color", "astronaut.png", 25), ("color", "chelsea.png", 50),
                                              ("color", "coffee.png", 15)])
def test_bundled_model_restores_well_above_the_noisy_input(name, image, sigma):
    model = raeae.load_model(f"builtin:{name}")
    clean = photo(image)[:192, :192]
    noisy = make_noisy(clean, NoiseConfig(sigma=sigma), seed=3)
    restored = raeae.restore_image(model, noisy)
    assert psnr(clean, restored) > psnr(clean, noisy) + 4.0


def test_colour_model_beats_the_gray_model_channel_by_channel():
    """CBSD68 (bench/release.py): +2.18 / +1.92 / +1.50 dB at σ 15 / 25 / 50. Crops vary: the dark,
    nearly gray corner of coffee.png at σ=50 gains only ~0.1 dB since builtin:gray's second release."""
    gains = []
    gray_model, colour_model = raeae.load_model("builtin:gray"), raeae.load_model("builtin:color")
    for image, sigma in [("astronaut.png", 25), ("chelsea.png", 25), ("coffee.png", 50)]:
        clean = photo(image)[:192, :192]
        noisy = make_noisy(clean, NoiseConfig(sigma=sigma), seed=5)
        gray = psnr(clean, raeae.restore_image(gray_model, noisy))
        colour = psnr(clean, raeae.restore_image(colour_model, noisy))
        gains.append(colour - gray)
    assert min(gains) > 0 and sum(gains) / len(gains) > 0.5, gains


def test_auto_is_not_one_model():
    with pytest.raises(ckpt.CheckpointError, match="picks a model per image"):
        raeae.load_model("builtin:auto")


@pytest.mark.slow
def test_restore_without_model_sends_each_image_to_its_bundled_model(ray_session, tmp_path):
    from raeae.restoring import RestoreConfig, restore

    src = tmp_path / "mixed"
    src.mkdir()
    Image.fromarray(make_noisy(photo("camera.png")[:96, :96], NoiseConfig(sigma=25), 0)).save(src / "gray.png")
    Image.fromarray(make_noisy(photo("astronaut.png")[:96, :96], NoiseConfig(sigma=25), 1)).save(src / "rgb.png")
    rgba = np.dstack([photo("chelsea.png")[:64, :64], np.full((64, 64), 200, np.uint8)])
    Image.fromarray(rgba).save(src / "rgba.png")
    summary = restore(RestoreConfig(input=str(src), output=str(tmp_path / "out")))
    assert summary["ok"] == 3
    ids = {n: ckpt.model_id(ckpt.read_checkpoint_bytes(f"builtin:{n}")) for n in NOISE_MODELS}
    rows = pq.read_table(tmp_path / "out").to_pylist()
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    assert by_name["gray.png"]["model_id"] == ids["gray"]
    colour_model = ids.get("color", ids["gray"])  # without a bundled colour model: gray, channel by channel
    assert by_name["rgb.png"]["model_id"] == colour_model and by_name["rgba.png"]["model_id"] == colour_model
    assert by_name["rgba.png"]["channels"] == 4 and by_name["rgb.png"]["channels"] == 3  # alpha kept


def test_builtin_auto_sends_low_quality_jpegs_to_jpeg_low_and_the_rest_to_jpeg():
    from raeae.inference import pick_model
    from raeae.jpeg import JpegFinding, compress, ijg_scale

    names = ckpt.auto_names()
    models = [ckpt.model_from_state(ckpt.parse(b)) for b in ckpt.read_models(ckpt.AUTO)]
    by_name = dict(zip(names, models))
    for image in (photo("astronaut.png")[:64, :64], photo("camera.png")[:64, :64]):  # colour, gray
        for quality in (10, 20, 50):
            jpeg = compress(image, quality)
            assert pick_model(models, jpeg, jpeg=JpegFinding(ijg_scale(quality))) is by_name["jpeg-low"]
        for quality in (60, 75, 95):
            jpeg = compress(image, quality)
            assert pick_model(models, jpeg, jpeg=JpegFinding(ijg_scale(quality))) is by_name["jpeg"]
    assert pick_model(models, photo("camera.png")[:64, :64]) is by_name["gray"]
    clean = photo("astronaut.png")[100:292, 100:292]  # noise before compression: the model that learnt it
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    assert pick_model(models, compress(noisy, 40), jpeg=JpegFinding(ijg_scale(40))) is by_name["jpeg"]
    assert pick_model(models, compress(clean, 40), jpeg=JpegFinding(ijg_scale(40))) is by_name["jpeg-low"]


def test_packaging_a_fine_tune_keeps_the_record_of_the_model_it_started_from(tmp_path):
    from raeae.data import copy_samples
    from raeae.model import ModelConfig, build_model
    from raeae.release import package

    cfg = ModelConfig(patch_size=5, hidden=(8,), latent=4, residual=True)
    ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg, train_config={"data": "train", "init": "builtin:gray"},
                                    history=[{"epoch": 1, "elapsed_s": 60.0}]), str(tmp_path / "trained"))
    copy_samples(tmp_path / "test", ("camera.png",))
    target = str(tmp_path / "bundled.pt")
    p = package(str(tmp_path / "trained"), target, "raeae train --init builtin:gray ...", "0" * 40,
                str(tmp_path / "test"), sigmas=[25.0])
    assert p["init"] == "builtin:gray" and p["train_minutes"] == 1.0
    assert p["init_provenance"] == ckpt.load_state("builtin:gray")[0]["provenance"]
    assert ckpt.load_state(target)[0]["provenance"]["init_provenance"]["train_minutes"] > 0


def test_packaging_keeps_the_record_of_unreleased_steps_down_to_the_last_release(tmp_path):
    """A release fine-tuned from a checkpoint that was never packaged, itself fine-tuned from a release:
    the unpackaged step's training config and run are on record, then the release it started from."""
    from raeae.data import copy_samples
    from raeae.model import ModelConfig, build_model
    from raeae.release import package

    cfg = ModelConfig(patch_size=5, hidden=(8,), latent=4, residual=True)
    step = {"data": "train", "init": "builtin:gray", "lr": 2e-4}
    ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg, train_config=step,
                                    history=[{"epoch": 1, "elapsed_s": 120.0}]), str(tmp_path / "step"))
    ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg, train_config={"data": "train", "init": str(tmp_path / "step")},
                                    history=[{"epoch": 1, "elapsed_s": 60.0}]), str(tmp_path / "trained"))
    copy_samples(tmp_path / "test", ("camera.png",))
    p = package(str(tmp_path / "trained"), str(tmp_path / "bundled.pt"), "raeae train ...", "0" * 40,
                str(tmp_path / "test"), sigmas=[25.0])
    unreleased = p["init_provenance"]
    assert p["init"] == str(tmp_path / "step") and unreleased["train_config"] == step
    assert unreleased["train_minutes"] == 2.0 and unreleased["init"] == "builtin:gray"
    assert unreleased["init_provenance"] == ckpt.load_state("builtin:gray")[0]["provenance"]


@pytest.mark.parametrize("image, quality, name", [("astronaut.png", 20, "jpeg-low"), ("camera.png", 20, "jpeg-low"),
                                                  ("coffee.png", 40, "jpeg-low"), ("astronaut.png", 75, "jpeg"),
                                                  ("camera.png", 60, "jpeg")])
def test_the_jpeg_models_undo_jpeg_that_the_noise_models_leave(image, quality, name):
    """The JPEG model builtin:auto picks for the quality, on a JPEG of a sample photograph (its quality found
    in its pixels, or told), against the JPEG itself and against the noise model restore would use without it."""
    from raeae.inference import restore_array
    from raeae.jpeg import JpegFinding, compress, ijg_scale

    clean = photo(image)[150:342, 150:342]  # textured: a flat crop's blocks keep too few coefficients to tell
    damaged = compress(clean, quality)
    jpeg_model = raeae.load_model(f"builtin:{name}")
    noise_model = raeae.load_model("builtin:color" if clean.ndim == 3 else "builtin:gray")
    restored = raeae.restore_image(jpeg_model, damaged)  # its quality found in its blocks
    assert psnr(clean, restore_array(jpeg_model, damaged, jpeg=JpegFinding(ijg_scale(quality)))) == pytest.approx(
        psnr(clean, restored), abs=0.1)  # as good as told it
    assert psnr(clean, restored) > psnr(clean, damaged) + 0.4
    assert psnr(clean, restored) > psnr(clean, raeae.restore_image(noise_model, damaged)) + 0.3
