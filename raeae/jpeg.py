"""JPEG damage: what compression does to an image, how strong it was, and where its 8×8 grid lies.

A JPEG encoder cuts the image into 8×8 blocks on a fixed grid (16×16 for colour with the usual 4:2:0
chroma subsampling), takes each block's DCT and divides the 64 coefficients by a quantisation table
before rounding. The table is the damage: :func:`table_scale` reads its strength from a file's own
tables (a JPEG states them), and :func:`estimate_jpeg` finds both the strength and the grid of an
image that was decoded and saved again as PNG or TIFF, from the DCT coefficients of its blocks, which
still lie on multiples of the table's steps.

Strength is the IJG scale of the standard luminance table (libjpeg's ``jpeg_quality_scaling`` / 100):
quality 50 is 1.0, quality 75 is 0.5, quality 20 is 2.5, quality 10 is 5.0. Cameras and other encoders
use tables of their own; the median ratio to the standard table puts them on the same scale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch only where tiles are made: the decode stage reads a JPEG's tables without it
    import torch

# The standard (ITU-T T.81 Annex K) luminance quantisation table, in natural (row-major) order.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64).reshape(8, 8)

BLOCK = 8  # the DCT block; the luma grid
PHASE_STEP = 4  # JPEG tiles lie at multiples of this from the grid: stride 4, four phases per 16 pixels
PHASES = 16 // PHASE_STEP  # a 4:2:0 chroma block covers 16×16 pixels: the grid repeats every 16
# What a jpeg_input model is told besides its pixels: the strength, and the tile's phase on the 16-pixel
# grid, one-hot for rows and for columns (a dense network learns a fixed function per input).
JPEG_INPUTS = 1 + 2 * PHASES


def ijg_scale(quality: float) -> float:
    """libjpeg's table scaling for ``quality`` (1-100), divided by 100: 50 -> 1.0, 75 -> 0.5, 20 -> 2.5."""
    q = min(100.0, max(1.0, float(quality)))
    return (5000.0 / q if q < 50 else 200.0 - 2.0 * q) / 100.0


def quality_of(scale: float) -> float:
    """The IJG quality whose table scaling is ``scale`` (the inverse of :func:`ijg_scale`)."""
    if scale <= 0:
        return 100.0
    q = 5000.0 / (scale * 100.0) if scale > 1.0 else (200.0 - scale * 100.0) / 2.0
    return float(min(100.0, max(1.0, q)))


def ijg_table(scale: float) -> np.ndarray:
    """The 8×8 luminance table libjpeg writes at this scaling (steps rounded, within 1-255)."""
    return np.clip(np.floor((IJG_LUMA * scale * 100.0 + 50.0) / 100.0), 1, 255)


def table_scale(table: list[int] | np.ndarray) -> float:
    """The strength of a file's luminance table (64 steps, natural order, as Pillow's
    ``Image.quantization`` gives them) on the IJG scale: the median step ratio to the standard table."""
    t = np.asarray(table, dtype=np.float64).reshape(8, 8)
    unclipped = t < 255  # steps capped at 255 (quality under ~20) say less than the scale
    return float(np.median((t / IJG_LUMA)[unclipped])) if unclipped.any() else float(255 / IJG_LUMA.min())


def file_scale(img: Image.Image) -> float | None:
    """The strength a JPEG file states in its luminance table, or None for a file that is no JPEG."""
    tables = getattr(img, "quantization", None) if img.format in ("JPEG", "MPO") else None
    if not tables:
        return None
    return table_scale(tables[min(tables)])  # table 0 is luminance by convention (the first one)


def compress(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (uint8 H×W or H×W×3) saved as a JPEG at ``quality`` by Pillow (libjpeg, 4:2:0 chroma
    for colour, as Pillow saves by default) and decoded again."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("L" if image.ndim == 2 else "RGB"))


def context(scale: "float | torch.Tensor", ys: "torch.Tensor", xs: "torch.Tensor") -> "torch.Tensor":
    """What a ``jpeg_input`` network is told of each tile ``(N, JPEG_INPUTS)``: the JPEG strength
    (one for all or per tile) and the phase of the tile's top-left corner ``(ys, xs)`` (pixels from the
    JPEG grid, multiples of :data:`PHASE_STEP`) on the 16-pixel grid, one-hot. A strength of 0 (no JPEG)
    zeroes the phases too, so such a tile's inputs are all zero."""
    import torch

    n = ys.shape[0]
    s = torch.as_tensor(scale, dtype=torch.float32, device=ys.device).expand(n).reshape(n, 1)
    rows = torch.nn.functional.one_hot((ys.long() % 16) // PHASE_STEP, PHASES).float()
    cols = torch.nn.functional.one_hot((xs.long() % 16) // PHASE_STEP, PHASES).float()
    return torch.cat([s, (rows * (s > 0)), (cols * (s > 0))], dim=1)


# --- finding JPEG damage in a decoded image -------------------------------------------------------

@dataclass(frozen=True)
class JpegFinding:
    """What :func:`estimate_jpeg` found: the IJG-scale strength (0: none found) and the grid's offset
    (rows, columns from the image's top-left to the first block's corner, 0-7)."""

    scale: float = 0.0
    offset: tuple[int, int] = (0, 0)

    @property
    def quality(self) -> float | None:
        return quality_of(self.scale) if self.scale > 0 else None


def _dct_matrix() -> np.ndarray:
    k = np.arange(BLOCK)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * BLOCK)) * np.sqrt(2.0 / BLOCK)
    m[0] /= np.sqrt(2.0)
    return m  # orthonormal: for 8×8 blocks it is exactly JPEG's forward DCT


_DCT = _dct_matrix()
# The low-frequency coefficients that are read (zig-zag 1-5): large steps, and energy in every photograph.
_PROBES = ((0, 1), (1, 0), (1, 1), (2, 0), (0, 2))
# coefficient (u, v) of a block B is DCT[u] @ B @ DCT[v]: the basis image outer(DCT[u], DCT[v]), flattened
_PROBE_BASIS = np.stack([np.outer(_DCT[u], _DCT[v]).ravel() for u, v in _PROBES], axis=1)  # (64, probes)
MAX_BLOCKS = 2048  # blocks sampled for the table: enough for the histograms, bounded time on a 300 MP scan
SEARCH_BLOCKS = 96  # blocks sampled at each of the 64 grid offsets, to find the grid


def _luma(image: np.ndarray) -> np.ndarray:
    """JPEG's Y (0-255, float) of a uint8 H×W or H×W×C image: what its encoder quantised."""
    a = image.astype(np.float64)
    if a.ndim == 2:
        return a
    if a.shape[2] < 3:
        return a[..., 0]
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def _coefficients(y: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The probe DCT coefficients ``(..., probes)`` of the 8×8 blocks of ``y`` whose top-left corners
    are ``corners`` ``(..., 2)``."""
    k = np.arange(BLOCK)
    blocks = y[corners[..., 0, None, None] + k[:, None], corners[..., 1, None, None] + k[None, :]]
    flat = blocks.reshape(*blocks.shape[:-2], BLOCK * BLOCK) - 128.0
    return flat @ _PROBE_BASIS  # each probe's basis image, flattened: one matrix product


def _corners(y: np.ndarray, offset: tuple[int, int], limit: int, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners ``(n, 2)`` of a sample of at most ``limit`` whole blocks on the grid at ``offset``."""
    rows, cols = (y.shape[0] - offset[0]) // BLOCK, (y.shape[1] - offset[1]) // BLOCK
    n = rows * cols
    pick = rng.choice(n, limit, replace=False) if n > limit else np.arange(n)
    return np.stack([pick // cols * BLOCK + offset[0], pick % cols * BLOCK + offset[1]], axis=1)


def _misfits(coef: np.ndarray, steps: np.ndarray, min_count: int = 50) -> np.ndarray:
    """How far coefficients ``(..., blocks, probes)`` lie from multiples of each row of ``steps``
    ``(tables, probes)``: per table ``(..., tables)``, the mean distance in steps over the coefficients that quantisation
    did not set to zero (0 for exact multiples, ~0.25 for none; 1 where too few are left to tell)."""
    r = coef.astype(np.float32)[..., None, :, :] / steps.astype(np.float32)[:, None, :]  # (..., tables, blocks, probes)
    keep = np.abs(r) > 0.5
    dist = (np.abs(r - np.rint(r)) * keep).sum(axis=(-2, -1))
    count = keep.sum(axis=(-2, -1))
    return np.where(count >= min_count, dist / np.maximum(count, 1), 1.0)


# Scales tried, from strong to weak: quality 5 to 90. Weaker JPEG (steps under 4 on the probes) leaves
# little damage worth a model, and rounding to 8 bits blurs such steps into none.
_SCALES = np.array([ijg_scale(q) for q in range(5, 91)])
_PROBE_STEPS = np.maximum(1.0, np.floor((np.array([[IJG_LUMA[u, v] for u, v in _PROBES]]) * _SCALES[:, None] * 100.0
                                         + 50.0) / 100.0))
_TRIED = _PROBE_STEPS.min(axis=1) >= 4
# The grid is found in two steps. First each axis on its own: along rows, the 1-D DCT of every run of 8
# pixels (its four highest frequencies) is near zero far more often where runs start on the grid, since
# the encoder zeroed those frequencies of whole blocks and a run across a block edge picks up the step
# (noise added before compression is zeroed with them). The best two phases of each axis make four
# candidate offsets (a statistic on rows, well under a millisecond on a 180×180 image, where trying all
# 64 offsets took ~12 ms). Then the candidate where two probes, (0, 1) and (1, 0), fit some table best is
# the grid; the table is found there on all five probes. A flat image keeps few non-zero coefficients at
# the true offset, where chance offsets keep many: a low count lets the true one take part.
_HIGH = _DCT[4:].T.astype(np.float32)  # (8, 4): a run's four highest 1-D frequencies
NEAR_ZERO = 1.0  # a decoded JPEG's 8-bit rounding leaves zeroed frequencies within ±1 (std ~0.3)
PHASE_ROWS = 64  # rows (or columns) read per axis, evenly spaced: the shares settle long before that
CANDIDATES = 2  # phases kept per axis
# An image is searched no further when on both axes no phase has GRID_PEAK times the median phase's near-zero
# runs and under FLAT_SHARE of the median phase's runs are near zero. Measured on 68 crops each of BSD68 and
# CBSD68 (bench/RESULTS.md): every JPEG (quality 10-75, with or without noise before it) passed; of the
# noisy images with no JPEG 58-67 of 68 stopped here, of the clean ones 12 (flat images go on to the search).
GRID_PEAK = 1.2
FLAT_SHARE = 0.3
_SEARCH_STEPS = np.unique(_PROBE_STEPS[_TRIED][:, :2], axis=0)
SEARCH_MIN_COUNT = 8
FIT = 0.12  # misfit below which coefficients are taken as quantised: decoded JPEGs measure ~0.02-0.09,
# unquantised coefficients ~0.25, and a table of twice the true steps ~0.13 or more
TIE = 0.02  # fits within this of the best are as good: the strongest of them is the table


def _phase_counts(y: np.ndarray) -> tuple[np.ndarray, int]:
    """For each column phase (0-7) of luma ``y``, how many of the highest 1-D frequencies of runs of 8 pixels
    starting there are near zero ``(8,)``, and how many were read per phase."""
    rows = y[np.linspace(0, y.shape[0] - 1, min(PHASE_ROWS, y.shape[0])).astype(np.int64)].astype(np.float32)
    whole = (rows.shape[1] - BLOCK + 1) // BLOCK * BLOCK  # runs starting at every phase equally often
    runs = np.lib.stride_tricks.sliding_window_view(rows, BLOCK, axis=1)[:, :whole]
    near = np.abs(np.ascontiguousarray(runs).reshape(-1, BLOCK) @ _HIGH) < NEAR_ZERO  # one matrix product
    return near.reshape(rows.shape[0], -1, BLOCK, near.shape[-1]).sum(axis=(0, 1, 3)), near.size // BLOCK


def _shows_grid(counts: np.ndarray, per_phase: int) -> bool:
    """Whether one axis's phase counts (:func:`_phase_counts`) leave room for a block grid: one phase stands
    out, or the image is flat enough that none would (see :data:`GRID_PEAK`)."""
    median = float(np.median(counts))
    return (counts.max() + 1) / (median + 1) >= GRID_PEAK or median >= FLAT_SHARE * per_phase


def estimate_jpeg(image: np.ndarray, offset: tuple[int, int] | None = None, seed: int = 0) -> JpegFinding:
    """The JPEG damage an 8-bit image shows (a JPEG decoded and saved again, e.g. as PNG): the grid
    offset (given, or of four candidates found axis by axis (:func:`_phase_counts`) the one where a small
    sample of blocks fits some table best: noise added before compression hides block edges, not the
    quantisation) and the strongest standard
    table whose steps the low-frequency DCT coefficients of its blocks fit (a table with half the
    steps fits as well, so the strongest of the best fits is taken). Images too small or too flat for
    the histograms (under 32×32, a single colour) and images with no JPEG damage give scale 0."""
    y = _luma(image)
    if min(y.shape[:2]) < 4 * BLOCK:
        return JpegFinding()
    rng = np.random.default_rng(seed)
    steps, scales = _PROBE_STEPS[_TRIED], _SCALES[_TRIED]
    if offset is None:  # the same sample of blocks moved to each candidate offset, all at once
        (rows, per_row), (cols, per_col) = _phase_counts(y.T), _phase_counts(y)
        if not (_shows_grid(rows, per_row) or _shows_grid(cols, per_col)):
            return JpegFinding()
        best = lambda counts: np.argsort(-counts, kind="stable")[:CANDIDATES]  # noqa: E731
        shifts = np.array([(a, b) for a in best(rows) for b in best(cols)])
        base = _corners(y[:-BLOCK, :-BLOCK], (0, 0), SEARCH_BLOCKS, rng)
        fits = _misfits(_coefficients(y, base[None] + shifts[:, None])[..., :2], _SEARCH_STEPS,
                        SEARCH_MIN_COUNT)  # (candidates, tables)
        offset = tuple(int(v) for v in shifts[int(fits.min(axis=1).argmin())])
    fits = _misfits(_coefficients(y, _corners(y, offset, MAX_BLOCKS, rng)), steps)
    if fits.min() >= FIT:
        return JpegFinding()
    return JpegFinding(float(scales[np.flatnonzero(fits <= fits.min() + TIE)[0]]), offset)


def stated_scale(data: bytes) -> float | None:
    """The strength a file's bytes state, for a JPEG (its luminance table, read from the header alone);
    None for any other file, or a JPEG whose header cannot be read (decoding then says why)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return file_scale(img)
    except Exception:  # noqa: BLE001 - the decode stage reports a damaged file; here it states nothing
        return None
