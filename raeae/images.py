"""Decoding stored images to uint8 arrays and encoding restored ones, with one documented policy.

Mode policy (what a file becomes, and what comes back out):

=====================  ===========================================  ==========================
input (Pillow mode)    restored as                                  written back as
=====================  ===========================================  ==========================
L (8-bit gray)         gray                                         8-bit gray PNG
RGB                    RGB                                          RGB PNG
RGBA / LA              colour (or gray) restored, alpha copied      RGBA / LA PNG
P (palette)            expanded to RGB (RGBA if it has              RGB / RGBA PNG
                       transparency): a palette cannot hold the
                       new colours a restoration makes
I;16 / I / F           scaled to 8-bit gray (16-bit >> 8)           8-bit gray PNG
1 (bilevel)            gray 0/255                                   8-bit gray PNG
CMYK / YCbCr / LAB     converted to RGB by Pillow                   RGB PNG
=====================  ===========================================  ==========================

Images over ``max_pixels`` are refused from the header, before any pixel is decoded (decompression
bombs). Every failure raises :class:`ImageError` with a message fit for an ``error`` column.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: beyond any photograph, below what a 64 GiB worker survives


class ImageError(ValueError):
    """A file is not an image we can restore; the message says why."""


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.uint16)
        return Image.fromarray((a >> 8).astype(np.uint8), mode="L")
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if a.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(a * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        return img.convert("RGB")
    return img


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Bytes of a stored image -> (uint8 array H×W or H×W×C with C in 2, 3, 4; source Pillow mode)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not a recognised image format (starts with {data[:8]!r}, {len(data)} bytes)") from None
    except Exception as exc:  # noqa: BLE001 - any failure to identify means "not an image"
        raise ImageError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"refused: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                         f"(decompression bomb guard, --max-pixels)")
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    mode = img.mode
    try:
        img.load()
        img = _to_8bit(img)
        arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(f"cannot decode {img.format or 'image'} data ({type(exc).__name__}: {exc})") from None
    return arr, mode


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 H×W or H×W×C -> PNG bytes. Level 1: PNG encoding dominates a restore loop's time at the
    default level 6, for files about 10 % larger."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Separate the alpha channel (LA, RGBA), which is copied through, not restored."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        return image[..., :-1].squeeze(-1) if image.shape[2] == 2 else image[..., :3], image[..., -1]
    return image, None


def join_alpha(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return image
    colour = image if image.ndim == 3 else image[..., None]
    return np.concatenate([colour, alpha[..., None]], axis=2)


def channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])
