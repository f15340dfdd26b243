"""Large images (archival scans of tens or hundreds of megapixels), restored band by band so that memory
follows the band, not the image.

An image over :data:`BAND_PIXELS` is cut into horizontal bands of about that many pixels. Each band is
restored with a margin of rows above and below (at least a patch, so every pixel it keeps gets every
tile that touches it), starting on the tile grid of the whole image, and only its own rows are kept:
the result is the whole image's restoration, while only the decoded image, one band in float and the
output buffer are held at once. The noise level is estimated once, on a sample of the image, and told
to every band; a JPEG grid keeps its place (bands start on multiples of 16 rows).
"""

from __future__ import annotations

import math

import numpy as np

# An image over this many pixels is restored in bands of about this many: a 4 MP colour band is 48 MB of
# float32 pixels plus the same for its blend sums, whatever the image's size.
BAND_PIXELS = 4_000_000
# What the noise level and the damage are judged on for a large image: a central crop of at most this many
# pixels (the estimates are medians over blocks, settled long before that).
SAMPLE_PIXELS = 4_000_000
GRID = 16  # bands and samples start on multiples of this (a JPEG's 16-pixel colour grid keeps its phase)


def is_large(image: np.ndarray) -> bool:
    return image.shape[0] * image.shape[1] > BAND_PIXELS


def sample(image: np.ndarray, pixels: int | None = None) -> np.ndarray:
    """A central crop of ``image`` of at most ``pixels`` (:data:`SAMPLE_PIXELS`), its corner on multiples of
    :data:`GRID` (a view)."""
    pixels = pixels or SAMPLE_PIXELS
    h, w = image.shape[:2]
    if h * w <= pixels:
        return image
    side = max(GRID, int(math.sqrt(pixels)) // GRID * GRID)
    ch, cw = min(h, side), min(w, max(side, pixels // max(1, min(h, side)) // GRID * GRID))
    y, x = (h - ch) // 2 // GRID * GRID, (w - cw) // 2 // GRID * GRID
    return image[y:y + ch, x:x + cw]


def bands(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, top, bottom)`` per band: it keeps rows ``y0:y1`` of a restoration of rows
    ``top:bottom``. ``top`` lies on the whole image's tile grid and on :data:`GRID`; the margins are
    at least a patch, so the kept rows see every tile they would in the whole image."""
    align = stride * GRID // math.gcd(stride, GRID)
    rows = max(align, BAND_PIXELS // max(1, width) // align * align)
    out = []
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        top = max(0, (y0 - patch) // align * align)
        out.append((y0, y1, top, min(height, y1 + patch)))
    return out


def restore_large(restore, model, image: np.ndarray, stride: int, sigma: float | None, finding) -> np.ndarray:
    """``image`` restored band by band by ``restore(model, band, noise_level, finding)`` (one image's
    :func:`raeae.inference.restore_arrays`), each band told ``sigma`` and the JPEG ``finding`` moved to
    the band's own rows."""
    from raeae.jpeg import BLOCK, JpegFinding

    out = np.empty_like(image)
    for y0, y1, top, bottom in bands(image.shape[0], image.shape[1], model.config.side, stride):
        moved = None if finding is None else JpegFinding(finding.scale, ((finding.offset[0] - top) % BLOCK,
                                                                          finding.offset[1]))
        restored = restore(model, image[top:bottom], sigma, moved)
        out[y0:y1] = restored[y0 - top:y1 - top]
    return out
