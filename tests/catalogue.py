"""A generated catalogue of awkward and broken inputs, with what raeae must make of each."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _tiff16(image: np.ndarray) -> bytes:
    """A 16-bit-a-channel RGB TIFF (LZW, as scanners write masters), which Pillow cannot write."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, photometric="rgb", compression="lzw")
    return buf.getvalue()


def write_catalogue(folder: Path, max_pixels: int) -> dict[str, tuple[str, object]]:
    """Write the catalogue into ``folder``; returns relative name -> ("ok", (h, w, channels)) or
    ("error", words the message must contain)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (37, 23), dtype=np.uint8)
    big_noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full_png, full_jpg = _save(Image.fromarray(big_noise), "PNG"), _save(Image.fromarray(big_noise), "JPEG")
    side = int(max_pixels ** 0.5) + 10
    cases: dict[str, tuple[bytes, tuple[str, object]]] = {
        "corrupt bytes.png": (bytes(rng.integers(0, 256, 2048, dtype=np.uint8)), ("error", "not a recognised image")),
        "truncated.png": (full_png[: len(full_png) // 2], ("error", "truncated")),
        "truncated.jpg": (full_jpg[: len(full_jpg) // 2], ("error", "truncated")),
        "zero.png": (b"", ("error", "empty file")),
        "text.png": (b"hello, this is a text file\n", ("error", "not a recognised image")),
        "gray16.png": (_save(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), ("ok", (37, 23, 1))),
        "cmyk.jpg": (_save(Image.fromarray(rgb).convert("CMYK"), "JPEG"), ("ok", (37, 23, 3))),
        "palette transparent.png": (_save(Image.fromarray(rgb).convert("P"), "PNG", transparency=0), ("ok", (37, 23, 4))),
        "rgba.png": (_save(Image.fromarray(np.dstack([rgb, gray])), "PNG"), ("ok", (37, 23, 4))),
        "grey alpha.png": (_save(Image.fromarray(gray).convert("LA"), "PNG"), ("ok", (37, 23, 2))),
        "one.png": (_save(Image.fromarray(np.array([[200]], np.uint8)), "PNG"), ("ok", (1, 1, 1))),
        "progressive.jpg": (_save(Image.fromarray(rgb), "JPEG", progressive=True), ("ok", (37, 23, 3))),
        "bitmap.bmp": (_save(Image.fromarray(rgb), "BMP"), ("ok", (37, 23, 3))),
        "scan.tiff": (_save(Image.fromarray(gray), "TIFF"), ("ok", (37, 23, 1))),
        "bomb.png": (_save(Image.new("L", (side, side)), "PNG"), ("error", "over the limit")),
        "ñandú café/日本 写真.png": (_save(Image.fromarray(gray), "PNG"), ("ok", (37, 23, 1))),
        "header cut.png": (full_png[:30], ("error", "truncated or corrupt png file")),
        "phone.heic": (_save(Image.fromarray(rgb), "HEIF"), ("ok", (37, 23, 3))),
        "animated.gif": (_save(Image.fromarray(rgb), "GIF", save_all=True,
                               append_images=[Image.fromarray(255 - rgb)]), ("error", "2 frames")),
        "master48.tif": (_tiff16(rgb.astype(np.uint16) * 257), ("ok", (37, 23, 3))),
        "master48 cut.tif": (_tiff16(rgb.astype(np.uint16) * 257)[:2000], ("error", "cannot decode tiff")),
        "floats 0-1.tiff": (_save(Image.fromarray(gray.astype(np.float32) / 255), "TIFF"), ("ok", (37, 23, 1))),
    }
    out = {}
    for name, (data, expect) in cases.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[name] = expect
    return out
