"""JPEG damage: the strength a file states, the strength and grid a decoded copy shows, and what a
jpeg_input model is told per tile; real JPEGs from Pillow's libjpeg, real photographs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from raeae import jpeg
from raeae.jpeg import JPEG_INPUTS, compress, context, estimate_jpeg, ijg_scale, quality_of, stated_scale

from conftest import photo, png_bytes


def jpeg_bytes(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_ijg_scale_and_quality_are_inverse():
    assert ijg_scale(50) == 1.0 and ijg_scale(75) == 0.5 and ijg_scale(20) == 2.5 and ijg_scale(10) == 5.0
    for q in (5, 10, 20, 33, 50, 60, 75, 90, 99):
        assert quality_of(ijg_scale(q)) == pytest.approx(q)
    assert quality_of(0.0) == 100.0


@pytest.mark.parametrize("quality", [5, 10, 20, 50, 75, 90])
def test_a_jpeg_states_its_strength_in_its_tables(quality):
    data = jpeg_bytes(photo("astronaut.png"), quality)
    assert stated_scale(data) == pytest.approx(ijg_scale(quality), rel=0.03)


def test_only_a_readable_jpeg_states_a_strength():
    assert stated_scale(png_bytes(photo("camera.png"))) is None
    assert stated_scale(b"\xff\xd8\xff garbage") is None
    assert stated_scale(b"") is None


@pytest.mark.parametrize("quality", [10, 20, 50, 75])
@pytest.mark.parametrize("name", ["camera.png", "astronaut.png"])
def test_a_decoded_jpeg_shows_its_strength_and_grid(name, quality):
    decoded = compress(photo(name), quality)
    found = estimate_jpeg(decoded)
    assert found.offset == (0, 0)
    assert found.scale == pytest.approx(ijg_scale(quality), rel=0.06)
    # cropped by 3 rows and 5 columns: the first whole block now starts at (5, 3)
    shifted = estimate_jpeg(decoded[3:, 5:])
    assert shifted.offset == (5, 3) and shifted.scale == pytest.approx(found.scale)


def test_noise_then_jpeg_is_found_though_noise_hides_the_block_edges():
    clean = photo("astronaut.png")
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 15, clean.shape), 0, 255).round().astype(np.uint8)
    assert estimate_jpeg(noisy).scale == 0  # noise alone is no JPEG
    found = estimate_jpeg(compress(noisy, 75))
    assert found.quality == pytest.approx(75, abs=2) and found.offset == (0, 0)


def test_images_without_jpeg_damage_or_too_small_or_flat_show_none():
    assert estimate_jpeg(photo("camera.png")).scale == 0
    assert estimate_jpeg(compress(photo("camera.png"), 20)[:20, :100]).scale == 0  # under 32 rows
    assert estimate_jpeg(np.full((64, 64), 128, np.uint8)).scale == 0
    assert estimate_jpeg(compress(photo("camera.png"), 97)).scale == 0  # too weak to tell from 8-bit rounding


def test_context_tells_strength_and_phase_on_the_16_pixel_grid():
    ys, xs = torch.tensor([0, 4, 8, 12, 16, 20]), torch.tensor([12, 0, 4, 8, 28, 16])
    c = context(2.5, ys, xs)
    assert c.shape == (6, JPEG_INPUTS)
    assert torch.all(c[:, 0] == 2.5)
    rows, cols = c[:, 1:1 + jpeg.PHASES], c[:, 1 + jpeg.PHASES:]
    assert rows.argmax(1).tolist() == [0, 1, 2, 3, 0, 1] and cols.argmax(1).tolist() == [3, 0, 1, 2, 3, 0]
    assert torch.all(rows.sum(1) == 1) and torch.all(cols.sum(1) == 1)
    assert torch.all(context(0.0, ys, xs) == 0)  # no JPEG: every input zero
