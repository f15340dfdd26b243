"""Impulses: dust, dead and hot pixels, salt-and-pepper. Found pixel by pixel and filled from their
neighbours, before the noise model restores what is left.

An impulse replaces a pixel's value with an extreme one (black or white, in any channel) that has
nothing to do with the scene, so nothing of the pixel is worth keeping: it is treated as missing. A
pixel at an extreme is taken as an impulse only where it stands out from its neighbourhood, so that
black shadows, white skies and clipped highlights (whole regions at the extremes) stay as they are.
"""

from __future__ import annotations

import numpy as np

# An extreme pixel is an impulse when it differs from the median of its 8 neighbours by more than this
# (of the full scale): impulses sit at the far end of the scale from what surrounds them. Filling
# takes every such pixel (a salt pixel missed in a bright area stays a bright speck: 0.25 gave 33.7 dB
# on BSD68 5 % salt-and-pepper, 0.1 gave 38.8 with the same fill); deciding whether an image has
# impulses at all counts only those beyond STANDS_OUT_DECIDE, which Gaussian noise clips to far less.
STANDS_OUT = 0.1
STANDS_OUT_DECIDE = 0.25
# Share of an image's pixel values that must be impulses for the image to be restored as impulse damage:
# measured on BSD68 and CBSD68 (see bench/RESULTS.md, "Damage detection"), clean and Gaussian-noisy
# images stay far below it, salt-and-pepper on 1 % of pixels is above it.
IMPULSE_IMAGE_SHARE = 0.002


def _extremes_standing_out(planes: np.ndarray, stands_out: float,
                           most: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Where ``planes`` (H×W×C, uint, C-contiguous) is at black or white (flat indices), whether each such
    value differs from the median of its 8 neighbours (replicate-padded at the borders) by more than
    ``stands_out`` of the full scale, and how many extreme values there are in all. Only the extreme
    values are read, each with one gather of its neighbours; with ``most``, only that many of them,
    evenly spaced through the image. (About 40 numpy calls an image: on a 64×64 image their fixed cost
    is most of the time, so the steps are few.)"""
    h, w, c = planes.shape
    top = np.iinfo(planes.dtype).max
    flat = planes.reshape(-1)
    at = np.flatnonzero((flat == 0) | (flat == top))
    count = at.size
    if most is not None and count > most:
        at = at[np.linspace(0, count - 1, most).astype(np.int64)]
    if at.size == 0:
        return at, np.zeros(0, dtype=bool), 0
    # the image with its border replicated one pixel out: every value's 8 neighbours lie at fixed steps
    padded = np.empty((h + 2, w + 2, c), planes.dtype)
    padded[1:-1, 1:-1] = planes
    padded[0, 1:-1], padded[-1, 1:-1] = planes[0], planes[-1]
    padded[:, 0], padded[:, -1] = padded[:, 1], padded[:, -2]
    row = (w + 2) * c
    steps = np.array([-row - c, -row, -row + c, -c, c, row - c, row, row + c])
    centres = at + (2 * (at // (w * c)) + w + 3) * c  # each value's place in the padded image
    median = np.partition(padded.reshape(-1)[centres[:, None] + steps], 3, axis=1)[:, 3]  # lower middle of 8
    return at, np.abs(flat[at].astype(np.int64) - median) > stands_out * top, count


def _planes(image: np.ndarray) -> np.ndarray:
    """An H×W or H×W×C image as C-contiguous H×W×C planes (a view where it already is one)."""
    return np.ascontiguousarray(image[..., None] if image.ndim == 2 else image)


def impulse_mask(image: np.ndarray, stands_out: float = STANDS_OUT) -> np.ndarray:
    """The impulses of an image (uint8 or uint16, H×W or H×W×C): values at black or white that differ
    from the median of their 8 neighbours (replicate-padded at the borders) by more than ``stands_out``
    of the full scale (bool, ``(H, W, C)``). Only the extreme values are looked at: a small image's few
    hundred cost a fraction of a millisecond, where a full-image median filter costs many times that."""
    planes = _planes(image)
    mask = np.zeros(planes.shape, dtype=bool)
    at, out, _ = _extremes_standing_out(planes, stands_out)
    mask.reshape(-1)[at] = out
    return mask


# Extreme values judged to estimate an image's impulse share: beyond this many (a noisy image's clipped
# values can be thousands, a scan's millions) an even sample of them. The estimate's standard error is
# then under 1 % of the share for salt-and-pepper (nearly every extreme value stands out), and only an
# image within that of IMPULSE_IMAGE_SHARE can be decided otherwise than by the exact count.
SHARE_SAMPLE = 1024


def impulse_share(image: np.ndarray, stands_out: float) -> float:
    """The share of an image's values that :func:`impulse_mask` takes for impulses: exact up to
    :data:`SHARE_SAMPLE` extreme values, above that estimated from an even sample of them."""
    planes = _planes(image)
    _, out, count = _extremes_standing_out(planes, stands_out, SHARE_SAMPLE)
    return np.count_nonzero(out) / out.size * count / planes.size if out.size else 0.0


def fill_impulses(image: np.ndarray) -> np.ndarray:
    """``image`` (uint8 or uint16, H×W or H×W×C, no alpha) with its impulses (:func:`impulse_mask`)
    filled in, channel by channel, by scikit-image's biharmonic inpainting: the smoothest surface
    through the known pixels around each hole. Measured on BSD68 with 5 % salt-and-pepper: 42.5 dB,
    where the 5×5 switching median gives 38.9 and a median of the known neighbours alone 38.8 (see
    bench/RESULTS.md, "Impulses")."""
    from raeae.bands import BAND_PIXELS, is_large

    if is_large(image):  # band by band, each with a margin of known pixels around it (bounded memory)
        out, rows, margin = np.empty_like(image), max(1, BAND_PIXELS // image.shape[1]), 8
        for y0 in range(0, image.shape[0], rows):
            top, bottom = max(0, y0 - margin), min(image.shape[0], y0 + rows + margin)
            out[y0:y0 + rows] = _fill(image[top:bottom])[y0 - top:y0 - top + rows]
        return out if not np.array_equal(out, image) else image
    return _fill(image)


def _fill(image: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    from raeae.inference import PIXEL_MAX

    mask = impulse_mask(image)  # (H, W, C)
    if not mask.any():
        return image
    top = PIXEL_MAX[image.dtype]
    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty_like(planes)
    for c in range(planes.shape[2]):
        plane = np.ascontiguousarray(planes[..., c], dtype=np.float64) / top
        filled = inpaint_biharmonic(plane, np.ascontiguousarray(mask[..., c])) if mask[..., c].any() else plane
        out[..., c] = np.clip(np.round(filled * top), 0, top).astype(image.dtype)
    return out[..., 0] if image.ndim == 2 else out
