"""What restore finds wrong with each image, and --damage's override; real photographs damaged as
archives hold them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raeae.damage import Damage, DamageRequest, Kind, Source, detect, requested
from raeae.jpeg import compress, ijg_scale, stated_scale
from raeae.restoring import RestoreConfig

from conftest import photo
from test_impulses import salt_and_pepper


def gaussian(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("name", ["camera.png", "astronaut.png"])
def test_each_kind_of_damage_is_found(name):
    clean = photo(name)
    assert detect(clean).kind is Kind.NOISE  # clean: the noise model, told a small σ
    for sigma in (15, 50):
        assert detect(gaussian(clean, sigma)).kind is Kind.NOISE
    for amount in (0.01, 0.05, 0.2):
        found = detect(salt_and_pepper(clean, amount))
        assert found.kind is Kind.IMPULSE and found.impulse_share == pytest.approx(amount, rel=0.5)
    found = detect(compress(clean, 20))
    assert found.kind is Kind.JPEG and found.source is Source.IMAGE and found.jpeg_quality == pytest.approx(20, abs=1)
    found = detect(compress(gaussian(clean, 15), 75))
    assert found.kind is Kind.JPEG and found.jpeg_quality == pytest.approx(75, abs=2)


def test_a_jpeg_file_is_taken_at_its_word():
    buf = io.BytesIO()
    Image.fromarray(photo("astronaut.png")).save(buf, format="JPEG", quality=30)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    found = detect(decoded, stated_scale(buf.getvalue()))
    assert (found.kind, found.source) == (Kind.JPEG, Source.FILE)
    assert found.jpeg_scale == pytest.approx(ijg_scale(30), rel=0.01) and found.jpeg_quality == pytest.approx(30, abs=0.5) and found.jpeg is not None
    # a JPEG saved at quality 98 leaves nothing worth a JPEG model: noise, as the file says
    assert detect(decoded, ijg_scale(98)).kind is Kind.NOISE


def test_images_too_small_or_flat_to_judge_are_unknown():
    assert detect(photo("camera.png")[:20, :20]).kind is Kind.UNKNOWN
    assert detect(np.full((100, 100, 3), 90, np.uint8)).kind is Kind.UNKNOWN
    assert detect(np.zeros((64, 64), np.uint16)).kind is Kind.UNKNOWN


def test_sixteen_bit_images_are_never_taken_for_jpegs():
    scan = compress(photo("camera.png"), 20).astype(np.uint16) * 257
    assert detect(scan).kind is Kind.NOISE


def test_an_alpha_channel_is_not_judged():
    rgb = salt_and_pepper(photo("astronaut.png")[:128, :128], 0.05)
    rgba = np.dstack([rgb, np.where(np.arange(128)[None, :] < 64, 0, 255).repeat(128, 0).astype(np.uint8)])
    assert detect(rgba).kind is Kind.IMPULSE
    assert detect(np.dstack([photo("astronaut.png")[:128, :128], rgba[..., 3]])).kind is Kind.NOISE


@pytest.mark.parametrize("text, expected", [
    ("auto", DamageRequest()), ("none", DamageRequest(Kind.NONE)), ("impulse", DamageRequest(Kind.IMPULSE)),
    ("jpeg", DamageRequest(Kind.JPEG)), ("jpeg:20", DamageRequest(Kind.JPEG, quality=20)),
    ("gaussian:25", DamageRequest(Kind.NOISE, sigma=25)), ("noise", DamageRequest(Kind.NOISE)),
    (" JPEG:75 ", DamageRequest(Kind.JPEG, quality=75))])
def test_damage_requests_parse(text, expected):
    assert DamageRequest.parse(text) == expected


@pytest.mark.parametrize("text", ["blur", "jpeg:0", "jpeg:abc", "impulse:5", "gaussian:-1", "none:3"])
def test_bad_damage_requests_fail_with_one_line(text):
    with pytest.raises(ValueError, match="--damage") as err:
        RestoreConfig(damage=text)
    assert "\n" not in str(err.value)


def test_a_request_overrides_detection_for_every_image():
    noisy = gaussian(photo("camera.png"), 25)
    assert requested(noisy, DamageRequest()).kind is Kind.NOISE
    forced = requested(noisy, DamageRequest(Kind.JPEG, quality=20))
    assert forced.kind is Kind.JPEG and forced.source is Source.FLAG and forced.jpeg_quality == pytest.approx(20)
    # jpeg without a quality: the file's, else the one the pixels show
    assert requested(compress(photo("camera.png"), 40), DamageRequest(Kind.JPEG)).jpeg_quality == pytest.approx(40, abs=1)
    assert requested(noisy, DamageRequest(Kind.JPEG), stated_jpeg_scale=ijg_scale(60)).jpeg_quality == pytest.approx(60)
    assert requested(noisy, DamageRequest(Kind.NOISE, sigma=25)) == Damage(Kind.NOISE, Source.FLAG, sigma=25)
    assert requested(noisy, DamageRequest(Kind.NONE)).kind is Kind.NONE
