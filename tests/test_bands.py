"""Large images are restored band by band with the same result as whole, and memory bounded by the band."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raeae import bands
from raeae.inference import restore_arrays
from raeae.jpeg import JpegFinding, compress, ijg_scale
from raeae.model import ModelConfig, build_model

from conftest import photo
from test_damage import gaussian
from test_impulses import salt_and_pepper
from test_jpeg_model import jpeg_model


def small_model(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(patch_size=13, channels=channels, hidden=(32,), latent=16, decoder_hidden=(32,),
                                   residual=True, noise_input=True)).eval()


@pytest.mark.parametrize("stride", [3, 6])
def test_bands_cover_every_row_once_and_start_on_the_grid(monkeypatch, stride):
    monkeypatch.setattr(bands, "BAND_PIXELS", 50 * 100)
    parts = bands.bands(1000, 100, 13, stride)
    assert parts[0][0] == 0 and parts[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    for y0, y1, top, bottom in parts:
        assert top % stride == 0 and top % 16 == 0 and y0 - top >= 13 or top == 0
        assert bottom - y1 >= 13 or bottom == 1000


@pytest.mark.parametrize("channels", [1, 3])
def test_a_large_image_restored_in_bands_equals_it_restored_whole(monkeypatch, channels):
    model = small_model(channels)
    image = gaussian(photo("astronaut.png")[:240, :200], 20)
    image = image if channels == 3 else image[..., 0]
    whole, = restore_arrays(model, [image], stride=6, bands=False)
    monkeypatch.setattr(bands, "BAND_PIXELS", 40 * 200)  # six bands of 40 rows and more
    told = []
    banded, small = restore_arrays(model, [image, image[:30, :30]], stride=6, on_sigma=told.extend)
    assert np.abs(banded.astype(int) - whole.astype(int)).max() <= 1 and (banded == whole).mean() > 0.999
    assert small.shape == (30, 30) + image.shape[2:] and len(told) == 2 and told[0] > 10


def test_a_large_jpeg_keeps_its_grid_in_every_band(monkeypatch):
    model = jpeg_model()
    image = compress(photo("astronaut.png")[:200, :160], 20)[5:, 3:]  # grid offset (3, 5)
    finding = JpegFinding(ijg_scale(20), (3, 5))
    whole, = restore_arrays(model, [image], jpeg=[finding], noise_level=5.0, bands=False)
    monkeypatch.setattr(bands, "BAND_PIXELS", 32 * 157)
    banded, = restore_arrays(model, [image], jpeg=[finding], noise_level=5.0)
    assert np.abs(banded.astype(int) - whole.astype(int)).max() <= 1 and (banded == whole).mean() > 0.999


def test_large_scans_are_judged_on_a_sample_and_filled_in_bands(monkeypatch):
    from raeae.damage import Kind, detect
    from raeae.impulses import fill_impulses

    dusty = salt_and_pepper(photo("camera.png"), 0.05)
    whole = fill_impulses(dusty)
    monkeypatch.setattr(bands, "BAND_PIXELS", 64 * 512)
    monkeypatch.setattr(bands, "SAMPLE_PIXELS", 128 * 128)
    assert bands.sample(dusty).shape == (128, 128)
    assert detect(dusty).kind is Kind.IMPULSE and detect(compress(photo("camera.png"), 30)).kind is Kind.JPEG
    banded = fill_impulses(dusty)
    assert (np.abs(banded.astype(int) - whole.astype(int)) <= 2).mean() > 0.999
