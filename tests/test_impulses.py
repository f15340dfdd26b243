"""Impulses (salt-and-pepper, dead and hot pixels): found where they stand out, filled from their
neighbours; on real photographs."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

from raeae.impulses import fill_impulses, impulse_mask
from raeae.metrics import psnr

from conftest import photo


def salt_and_pepper(image: np.ndarray, amount: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hit = rng.random(image.shape) < amount
    return np.where(hit, np.where(rng.random(image.shape) < 0.5, 0, 255), image).astype(np.uint8)


def switching_median(noisy: np.ndarray) -> np.ndarray:
    """The classical baseline: every pixel at 0 or 255 replaced by its 5×5 median."""
    size = 5 if noisy.ndim == 2 else (5, 5, 1)
    return np.where((noisy == 0) | (noisy == 255), median_filter(noisy, size=size), noisy)


def test_impulses_are_found_but_black_and_white_regions_are_not():
    clean = photo("camera.png")[:128, :128].copy()
    clean[:40, :40], clean[-40:, -40:] = 0, 255  # a clipped shadow and a blown highlight
    noisy = salt_and_pepper(clean, 0.05)
    mask = impulse_mask(noisy)[..., 0]
    hit = noisy != clean
    assert mask[hit].mean() > 0.9  # nearly every impulse that changed a pixel
    # and nothing else but a few pixels on the regions' edges, where impulses next to them tip the median
    false = mask & ~hit
    assert false.sum() <= 10 and not false[2:38, 2:38].any() and not false[-38:-2, -38:-2].any()
    assert impulse_mask(clean).sum() <= 2  # the two squares' inner corners
    assert impulse_mask(photo("astronaut.png")).mean() < 0.001  # specks of a real photograph


def brute_force_mask(image: np.ndarray, stands_out: float) -> np.ndarray:
    """Every pixel's 8-neighbour lower median, the whole image at once: what impulse_mask must agree with."""
    planes = (image[..., None] if image.ndim == 2 else image).astype(np.int64)
    top = np.iinfo(image.dtype).max
    p = np.pad(planes, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = planes.shape[:2]
    around = np.stack([p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    median = np.sort(around, axis=0)[3]
    return ((planes == 0) | (planes == top)) & (np.abs(planes - median) > stands_out * top)


def test_the_impulse_mask_agrees_with_a_brute_force_median_at_any_depth_and_shape():
    rng = np.random.default_rng(3)
    for image in (salt_and_pepper(photo("coffee.png")[:61, :47], 0.1),
                  salt_and_pepper(photo("camera.png")[:1, :9], 0.5),
                  (salt_and_pepper(photo("camera.png")[:40, :33], 0.1).astype(np.uint16) * 257),
                  rng.choice(np.array([0, 1, 254, 255], np.uint8), (17, 23, 2))):
        for stands_out in (0.1, 0.25):
            assert np.array_equal(impulse_mask(image, stands_out), brute_force_mask(image, stands_out))


def test_filling_beats_the_switching_median_on_a_real_photograph():
    for name in ("camera.png", "astronaut.png", "coffee.png"):  # measured: +1.8, +3.7, +1.8 dB
        clean = photo(name)
        noisy = salt_and_pepper(clean, 0.05)
        filled = fill_impulses(noisy)
        assert filled.dtype == np.uint8 and filled.shape == clean.shape
        assert psnr(clean, filled) > psnr(clean, switching_median(noisy)) + 1.5


def test_sixteen_bit_images_are_filled_at_sixteen_bits_and_clean_ones_come_back_as_they_were():
    clean = photo("camera.png")[:64, :64].astype(np.uint16) * 257
    noisy = clean.copy()
    noisy[10, 10], noisy[30, 40] = 65535, 0
    filled = fill_impulses(noisy)
    assert filled.dtype == np.uint16
    assert abs(int(filled[10, 10]) - int(clean[10, 10])) < 20 * 257
    assert np.array_equal(filled[noisy == clean], clean[noisy == clean])
    assert fill_impulses(clean) is clean
