"""What is wrong with an image, decided per image from what it shows (or as ``--damage`` says), and
what restore does about it.

=========  ==========================================  ===============================================
kind       found by                                    restored by
=========  ==========================================  ===============================================
impulse    pixels at black or white that stand out     filled from their neighbours (biharmonic
           from their neighbours, more than Gaussian   inpainting, :mod:`raeae.impulses`), then the
           noise of the image's level would clip       noise model where noise is left
jpeg       the file's own quantisation tables (a       the JPEG model, told the strength and each
           JPEG), or its blocks' DCT coefficients on   tile's place on the block grid, and the noise
           multiples of a table's steps (a decoded     level (noise then JPEG is the usual case)
           JPEG saved again)
noise      anything else (Gaussian-like sensor and     the noise model, told the estimated σ (as
           shot noise; clean images, which it leaves   before damage detection)
           nearly as they are)
unknown    too small or flat to judge                  as noise
none       only when ``--damage none`` says so         written back unchanged
=========  ==========================================  ===============================================
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

# Damage is judged on images at least this big (a JPEG histogram needs 16 blocks of 8×8, and a few
# hundred pixels say little about impulses).
MIN_SIDE = 32
# A decoded copy is searched for JPEG damage from this side up (a JPEG file's own tables are read at any
# size): smaller images hold too few blocks to tell quantisation from chance cheaply, and the search
# would cost more than their restoration (bench/RESULTS.md, "What detection costs").
MIN_SIDE_JPEG_SEARCH = 128
# A stated JPEG table weaker than quality 95's leaves next to nothing to undo: such a file is noise.
WEAKEST_JPEG_SCALE = 0.1


class Kind(enum.Enum):
    IMPULSE = "impulse"
    JPEG = "jpeg"
    NOISE = "noise"
    UNKNOWN = "unknown"
    NONE = "none"


class Source(enum.Enum):
    """Where a row's damage came from."""

    IMAGE = "image"  # found in the pixels
    FILE = "file"  # stated by the file (a JPEG's quantisation tables)
    FLAG = "flag"  # given with --damage


@dataclass(frozen=True)
class Damage:
    """One image's damage: its kind, where that came from, and what was measured on the way: the JPEG
    strength (IJG scale, 0 for none) and grid offset, and the share of pixel values that are impulses
    (None where not looked for). ``sigma`` is a σ (0-255) given with ``--damage gaussian:S``."""

    kind: Kind
    source: Source = Source.IMAGE
    jpeg_scale: float = 0.0
    jpeg_offset: tuple[int, int] = (0, 0)
    impulse_share: float | None = None
    sigma: float | None = None

    @property
    def jpeg_quality(self) -> float | None:
        from raeae.jpeg import quality_of

        return round(quality_of(self.jpeg_scale), 1) if self.jpeg_scale > 0 else None

    @property
    def jpeg(self):
        """The JPEG finding restore tiles by (None where there is no JPEG damage)."""
        from raeae.jpeg import JpegFinding

        return JpegFinding(self.jpeg_scale, self.jpeg_offset) if self.kind is Kind.JPEG else None


@dataclass(frozen=True)
class DamageRequest:
    """What ``--damage`` asks for: ``auto`` (detect per image), or one kind for the whole run with an
    optional strength: ``jpeg:Q`` (quality), ``gaussian:S`` (σ on the 0-255 scale), ``impulse``,
    ``noise``, ``none``."""

    kind: Kind | None = None  # None: auto
    quality: float | None = None
    sigma: float | None = None

    @classmethod
    def parse(cls, text: str) -> "DamageRequest":
        name, _, value = text.strip().lower().partition(":")
        kinds = {"auto": None, "jpeg": Kind.JPEG, "gaussian": Kind.NOISE, "noise": Kind.NOISE,
                 "impulse": Kind.IMPULSE, "none": Kind.NONE}
        if name not in kinds:
            raise ValueError(f"--damage {text!r}: expected auto, jpeg[:QUALITY], gaussian[:SIGMA], impulse or none")
        kind = kinds[name]
        if not value:
            return cls(kind)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--damage {text!r}: {value!r} is not a number") from None
        if kind is Kind.JPEG and 1 <= number <= 100:
            return cls(kind, quality=number)
        if kind is Kind.NOISE and 0 <= number <= 255:
            return cls(kind, sigma=number)
        raise ValueError(f"--damage {text!r}: only jpeg:QUALITY (1-100) and gaussian:SIGMA (0-255) take a value")


def _judgeable(image: np.ndarray) -> bool:
    return min(image.shape[:2]) >= MIN_SIDE and int(image.max()) != int(image.min())


def _impulses_stand_out(colour: np.ndarray) -> tuple[float, bool]:
    """The share of impulse values and whether it is more than Gaussian noise of the image's level would
    clip: a pixel clipped by noise of std σ stands out by more than ``STANDS_OUT_DECIDE`` at most
    Φ(-that/σ) of the time. The noise level is estimated only when the share could matter."""
    from raeae.corrupt import noise_level
    from raeae.impulses import IMPULSE_IMAGE_SHARE, STANDS_OUT_DECIDE, impulse_share
    from raeae.inference import to_tensor

    share = impulse_share(colour, STANDS_OUT_DECIDE)
    if share <= IMPULSE_IMAGE_SHARE:
        return share, False
    sigma = noise_level(to_tensor(colour))
    clipped = 0.5 * math.erfc(STANDS_OUT_DECIDE / max(sigma, 1e-6) / math.sqrt(2)) if sigma > 0 else 0.0
    return share, share > IMPULSE_IMAGE_SHARE + 2 * clipped


def detect(image: np.ndarray, stated_jpeg_scale: float | None = None) -> Damage:
    """The damage ``image`` (uint8 or uint16, H×W or H×W×C) shows: impulses first (they would hide the
    rest), then JPEG (the file's own tables when it states them, else a decoded copy's blocks), else
    noise. ``stated_jpeg_scale`` is what the file's tables say (:func:`raeae.jpeg.stated_scale`)."""
    from raeae.bands import sample
    from raeae.images import split_alpha
    from raeae.jpeg import estimate_jpeg

    colour = sample(split_alpha(image)[0])  # a large scan is judged on a central crop (bounded memory)
    if not _judgeable(colour):
        return Damage(Kind.UNKNOWN)
    share, impulsive = _impulses_stand_out(colour)
    if impulsive:
        return Damage(Kind.IMPULSE, impulse_share=share)
    if stated_jpeg_scale is not None:
        if stated_jpeg_scale >= WEAKEST_JPEG_SCALE:
            return Damage(Kind.JPEG, Source.FILE, jpeg_scale=stated_jpeg_scale, impulse_share=share)
        return Damage(Kind.NOISE, Source.FILE, impulse_share=share)
    if colour.dtype == np.uint8 and min(colour.shape[:2]) >= MIN_SIDE_JPEG_SEARCH:  # JPEG is an 8-bit format
        found = estimate_jpeg(colour)
        if found.scale > 0:
            return Damage(Kind.JPEG, jpeg_scale=found.scale, jpeg_offset=found.offset, impulse_share=share)
    return Damage(Kind.NOISE, impulse_share=share)


def requested(image: np.ndarray, request: DamageRequest, stated_jpeg_scale: float | None = None) -> Damage:
    """The damage a row is restored for: :func:`detect`'s with ``--damage auto``, else the request's
    kind for every image (a JPEG's strength from the request, the file or the pixels, in that order)."""
    from raeae.jpeg import estimate_jpeg, ijg_scale

    if request.kind is None:
        return detect(image, stated_jpeg_scale)
    if request.kind is not Kind.JPEG:
        return Damage(request.kind, Source.FLAG, sigma=request.sigma)
    from raeae.bands import sample

    colour = sample(image if image.ndim == 2 else image[..., :3])
    found = estimate_jpeg(colour) if colour.dtype == np.uint8 else None
    offset = found.offset if found is not None and found.scale > 0 else (0, 0)
    scale = (ijg_scale(request.quality) if request.quality is not None else stated_jpeg_scale
             or (found.scale if found is not None and found.scale > 0 else ijg_scale(50)))
    return Damage(Kind.JPEG, Source.FLAG, jpeg_scale=scale, jpeg_offset=offset)


def prepare(image: np.ndarray, request: DamageRequest = DamageRequest(),
            stated_jpeg_scale: float | None = None) -> tuple[np.ndarray, Damage]:
    """An image as its model gets it, and the damage it is restored for (:func:`requested`): impulses are
    filled here (:func:`raeae.impulses.fill_impulses`, alpha kept), before the model restores what noise
    is left. What the restore stage does per row, and what a one-image-at-a-time loop should do."""
    from raeae.images import join_alpha, split_alpha
    from raeae.impulses import fill_impulses

    damage = requested(image, request, stated_jpeg_scale)
    if damage.kind is Kind.IMPULSE:
        colour, alpha = split_alpha(image)
        image = join_alpha(fill_impulses(colour), alpha)
    return image, damage
