"""The bad-input catalogue and the mode policy, on real encoded files."""

import io

import numpy as np
import pytest
from PIL import Image

from raeae.images import ImageError, decode, encode_png


def enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


rng = np.random.default_rng(0)
RGB = rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)
GRAY = rng.integers(0, 256, (21, 13), dtype=np.uint8)


@pytest.mark.parametrize("data,mode,shape", [
    (enc(Image.fromarray(GRAY), "PNG"), "L", (21, 13)),
    (enc(Image.fromarray(RGB), "PNG"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(np.dstack([RGB, GRAY])), "PNG"), "RGBA", (21, 13, 4)),
    (enc(Image.fromarray(GRAY).convert("LA"), "PNG"), "LA", (21, 13, 2)),
    (enc(Image.fromarray(RGB).convert("P"), "PNG", transparency=0), "P", (21, 13, 4)),
    (enc(Image.fromarray(RGB).convert("P"), "PNG"), "P", (21, 13, 3)),
    (enc(Image.fromarray((GRAY.astype(np.uint16) * 257)), "PNG"), "I;16", (21, 13)),
    (enc(Image.fromarray(RGB).convert("CMYK"), "JPEG"), "CMYK", (21, 13, 3)),
    (enc(Image.fromarray(RGB), "JPEG", progressive=True, quality=90), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(GRAY).convert("1"), "PNG"), "1", (21, 13)),
    (enc(Image.fromarray(RGB), "BMP"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(RGB), "TIFF"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(np.array([[7]], np.uint8)), "PNG"), "L", (1, 1)),
])
def test_modes_decode_to_documented_shapes(data, mode, shape):
    arr, src_mode = decode(data)
    assert src_mode == mode
    assert arr.shape == shape and arr.dtype == np.uint8


def test_16_bit_gray_is_scaled_not_clipped():
    arr, _ = decode(enc(Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG"))
    assert np.array_equal(arr, GRAY)


def test_png_round_trip_is_lossless():
    for a in (GRAY, RGB):
        assert np.array_equal(decode(encode_png(a))[0], a)


@pytest.mark.parametrize("data,words", [
    (b"", "empty"),
    (b"hello, I am text\n", "not a recognised image"),
    (enc(Image.fromarray(RGB), "PNG")[:50], "truncated"),
    (enc(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)), "JPEG")[:400], "truncated"),
    (bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), "not a recognised image"),
])
def test_bad_files_raise_image_error_saying_why(data, words):
    with pytest.raises(ImageError, match=f"(?i){words}"):
        decode(data)


def test_decompression_bomb_is_refused_from_the_header():
    big = enc(Image.new("L", (4000, 3000)), "PNG")  # tiny file, 12 MP
    with pytest.raises(ImageError, match="over the limit"):
        decode(big, max_pixels=10_000_000)
    assert decode(big, max_pixels=20_000_000)[0].shape == (3000, 4000)
