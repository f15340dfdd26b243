"""The bad-input catalogue and the mode policy, on real encoded files."""

import io

import numpy as np
import pytest
from PIL import Image

from raeae.images import ImageError, SourceInfo, decode, decode_image, encode_png

from conftest import png_bytes


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
    (enc(Image.fromarray(RGB), "JPEG2000"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(RGB), "WEBP"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(RGB), "AVIF"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(RGB), "HEIF"), "RGB", (21, 13, 3)),
    (enc(Image.fromarray(GRAY), "HEIF"), "L", (21, 13)),
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
    deep = GRAY.astype(np.uint16) * 256 + 3
    image, mode, _ = decode_image(encode_png(deep))
    assert mode == "I;16" and image.dtype == np.uint16 and np.array_equal(image, deep)  # a restore keeps 16 bits
    assert np.array_equal(decode(encode_png(deep))[0], GRAY)  # training and evaluation read 8 bits


@pytest.mark.parametrize("data,words", [
    (b"", "empty"),
    (b"hello, I am text\n", "not a recognised image"),
    (enc(Image.fromarray(RGB), "PNG")[:50], "truncated"),
    (enc(Image.fromarray(RGB), "PNG")[:40], "truncated or corrupt PNG file: its header cannot be read \\(40 bytes"),
    (enc(Image.fromarray(RGB), "HEIF")[:30], "truncated or corrupt HEIF file"),
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


def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation 6: stored on its side, displayed turned 90 degrees clockwise
    exif[0x010F] = "raeae test camera"  # Make
    return exif.tobytes()


def test_a_camera_jpeg_keeps_its_orientation_colour_profile_and_dpi_in_the_restored_png():
    icc = srgb_profile()
    data = enc(Image.fromarray(RGB), "JPEG", exif=camera_exif(), icc_profile=icc, dpi=(300, 300))
    image, mode, info = decode_image(data)
    assert mode == "RGB" and image.shape == (21, 13, 3)  # the pixels as stored: turning them is the viewer's job
    assert info.icc_profile == icc and info.dpi == (300.0, 300.0) and info.exif.startswith(b"Exif")
    out = Image.open(io.BytesIO(encode_png(image, 1, info)))
    assert out.info["icc_profile"] == icc and out.getexif()[0x0112] == 6
    assert out.getexif()[0x010F] == "raeae test camera" and out.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_without_metadata_the_png_is_the_same_as_before():
    image, _, info = decode_image(enc(Image.fromarray(RGB), "PNG"))
    assert info == SourceInfo()
    assert encode_png(image, 1, info) == encode_png(image, 1)
    assert not Image.open(io.BytesIO(encode_png(image, 1, info))).info


def test_a_profile_that_no_longer_fits_the_pixels_is_dropped():
    rgb_profile = srgb_profile()
    cmyk_profile = rgb_profile[:16] + b"CMYK" + rgb_profile[20:]  # what a print scan carries
    _, mode, info = decode_image(enc(Image.fromarray(RGB).convert("CMYK"), "JPEG", icc_profile=cmyk_profile))
    assert mode == "CMYK" and info.icc_profile is None  # the pixels became RGB; a CMYK profile would garble them
    _, _, info = decode_image(enc(Image.fromarray(GRAY), "PNG", icc_profile=rgb_profile))
    assert info.icc_profile is None  # an RGB profile on gray pixels
    _, _, info = decode_image(enc(Image.fromarray(RGB).convert("P"), "PNG", icc_profile=rgb_profile))
    assert info.icc_profile == rgb_profile  # palette -> RGB: the profile still describes the colours


def test_a_damaged_exif_block_is_carried_as_it_was_not_parsed():
    junk = b"Exif\x00\x00" + bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    image, _, info = decode_image(enc(Image.fromarray(RGB), "JPEG", exif=junk))
    assert info.exif == junk
    assert Image.open(io.BytesIO(encode_png(image, 1, info))).info["exif"].endswith(junk[6:])


@pytest.mark.parametrize("dpi", [(0, 0), (72, 0)])
def test_a_zero_resolution_is_no_resolution(dpi):
    _, _, info = decode_image(enc(Image.fromarray(GRAY), "PNG", dpi=dpi))
    assert info.dpi is None


FRAME_PIXELS = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]


def multi_frame(fmt: str, count: int = 3) -> bytes:
    """A file of ``count`` frames. Fresh images each time: Pillow leaves a save's settings on the frames
    it appends, and the next format's writer trips over them."""
    first, *rest = [Image.fromarray(a) for a in FRAME_PIXELS[:count]]
    return enc(first, fmt, save_all=True, append_images=rest)


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "PNG", "WEBP"])
def test_pages_and_animations_are_refused_rather_than_cut_to_their_first_frame(fmt):
    with pytest.raises(ImageError, match=f"{fmt} with 3 frames .*split the frames"):
        decode(multi_frame(fmt))
    assert decode(multi_frame(fmt, 1))[0].shape == (20, 30, 3)  # the same format with one frame restores


def test_a_jpegs_extra_pictures_and_a_tiffs_thumbnail_are_not_pages():
    from PIL import TiffImagePlugin

    mpo = multi_frame("MPO", 2)  # e.g. a depth or gain map
    assert Image.open(io.BytesIO(mpo)).n_frames == 2
    assert decode(mpo)[0].shape == (20, 30, 3)
    buf = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buf, True) as tiff:  # a scan with its reduced-resolution copy
        Image.fromarray(FRAME_PIXELS[0]).save(tiff, "TIFF")
        tiff.newFrame()
        Image.fromarray(FRAME_PIXELS[1]).resize((10, 7)).save(tiff, "TIFF", tiffinfo={254: 1})  # NewSubfileType: reduced resolution
        tiff.newFrame()
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    assert np.array_equal(decode(buf.getvalue())[0], FRAME_PIXELS[0])


def test_float_images_from_0_to_1_are_scaled_and_nan_is_refused():
    levels = GRAY.astype(np.float32) / 255
    assert np.array_equal(decode(enc(Image.fromarray(levels), "TIFF"))[0], GRAY)
    levels[3, 4] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        decode(enc(Image.fromarray(levels), "TIFF"))


def test_a_phone_heic_stored_on_its_side_decodes_upright():
    """HEIF stores rotation as a transform that libheif applies (pillow-heif then reports Orientation 1),
    so the pixels come out as displayed and the restored PNG shows them the same way."""
    data = enc(Image.fromarray(RGB), "HEIF", quality=95, exif=camera_exif(6))
    image, mode, info = decode_image(data)
    assert mode == "RGB" and image.shape == (13, 21, 3)  # turned: 21 rows x 13 columns stored
    out = Image.open(io.BytesIO(encode_png(image, 1, info)))
    assert out.size == (21, 13) and out.getexif().get(0x0112, 1) == 1
    assert out.getexif()[0x010F] == "raeae test camera"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's own notes on the damaged TIFF and MPO headers
@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "PNG", "WEBP", "MPO", "HEIF"])
def test_damaged_files_of_every_frame_kind_are_image_errors_only(fmt):
    data = multi_frame(fmt)
    noise = bytes(np.random.default_rng(1).integers(0, 256, 40, dtype=np.uint8))
    for cut in range(1, len(data), max(1, len(data) // 25)):
        for damaged in (data[:cut], data[:cut] + noise + data[cut + 40:]):
            try:
                decode_image(damaged)
            except ImageError:
                pass  # anything else would escape as a traceback instead of an error row's message


DEEP = rng.integers(0, 65536, (21, 13, 4), dtype=np.uint16)  # every one of the 65,536 levels can occur


def tiff_rgb(image: np.ndarray, **kw) -> bytes:
    import tifffile  # Pillow cannot write 16-bit, float or signed colour TIFFs; scanners and science software do

    buf = io.BytesIO()
    tifffile.imwrite(buf, image, photometric="rgb", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("channels,mode", [(2, "LA;16"), (3, "RGB;16"), (4, "RGBA;16")])
def test_16_bit_colour_pngs_are_read_and_written_at_16_bits(channels, mode):
    deep = np.ascontiguousarray(DEEP[..., :channels])
    image, src_mode, _ = decode_image(encode_png(deep))
    assert src_mode == mode and image.dtype == np.uint16 and np.array_equal(image, deep)
    eight, src_mode = decode(encode_png(deep))  # training and evaluation read the top 8 bits
    assert src_mode == mode and eight.dtype == np.uint8 and np.array_equal(eight, (deep >> 8).astype(np.uint8))


@pytest.mark.parametrize("kw", [{}, {"compression": "lzw"}, {"compression": "zlib", "predictor": True},
                                {"compression": "zlib", "tile": (16, 16)}, {"planarconfig": "separate"}])
def test_16_bit_colour_tiffs_are_read_at_16_bits(kw):
    rgb = np.ascontiguousarray(DEEP[..., :3])
    data = tiff_rgb(np.moveaxis(rgb, -1, 0) if kw.get("planarconfig") == "separate" else rgb, **kw)
    image, mode, _ = decode_image(data)
    assert mode == "RGB;16" and image.dtype == np.uint16 and np.array_equal(image, rgb)
    image, mode, _ = decode_image(tiff_rgb(DEEP, extrasamples=["unassalpha"]))
    assert mode == "RGBA;16" and np.array_equal(image, DEEP)


def test_a_16_bit_colour_png_keeps_the_profile_exif_and_dpi():
    icc = srgb_profile()
    info = SourceInfo(icc_profile=icc, exif=camera_exif(), dpi=(600.0, 600.0))
    png = encode_png(np.ascontiguousarray(DEEP[..., :3]), 1, info)
    out = Image.open(io.BytesIO(png))  # Pillow reads a 48-bit PNG's chunks, though not its 16-bit pixels
    assert out.info["icc_profile"] == icc and out.getexif()[0x0112] == 6
    assert out.info["dpi"] == pytest.approx((600, 600), abs=0.01)
    image, _, got = decode_image(png)
    assert np.array_equal(image, DEEP[..., :3]) and got.icc_profile == icc and got.exif.startswith(b"Exif")
    assert encode_png(image, 1, got) == png  # what a restore reads is what it writes back


def test_damaged_16_bit_colour_files_are_image_errors():
    png, tif = encode_png(np.ascontiguousarray(DEEP[..., :3])), tiff_rgb(DEEP[..., :3], compression="zlib")
    for data in (png[:len(png) // 2], png[:60] + bytes(40) + png[100:], tif[:len(tif) // 2]):
        with pytest.raises(ImageError, match="cannot decode (PNG|TIFF) data"):
            decode_image(data)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint32])
def test_a_whole_tiff_of_samples_pillow_cannot_read_is_named_not_called_corrupt(dtype):
    data = tiff_rgb(np.zeros((5, 6, 3), dtype))  # valid files: float or signed RGB from scientific software
    with pytest.raises(ImageError, match=f"TIFF of {np.dtype(dtype)} samples, 5x6x3: a sample type raeae does not"):
        decode_image(data)
    with pytest.raises(ImageError, match="truncated or corrupt TIFF file"):
        decode_image(data[:40])


def ppm16(image: np.ndarray, maxval: int = 65535, header: str = "") -> bytes:
    """A binary PPM (or PGM, for H×W) with two big-endian bytes a sample, as raw converters write them."""
    h, w = image.shape[:2]
    magic = "P6" if image.ndim == 3 else "P5"
    return f"{magic}\n{header}{w} {h}\n{maxval}\n".encode() + image.astype(">u2").tobytes()


@pytest.mark.parametrize("maxval", [65535, 4095, 1000])
def test_16_bit_ppm_and_pgm_are_read_at_16_bits_scaled_as_pillow_scales_a_pgm(maxval):
    rgb = (DEEP[..., :3].astype(np.uint32) * maxval // 65535).astype(np.uint16)
    expected = np.round(rgb * 65535.0 / maxval).astype(np.uint16)
    image, mode, _ = decode_image(ppm16(rgb, maxval, header="# dcraw -4\n"))
    assert mode == "RGB;16" and image.dtype == np.uint16 and np.array_equal(image, expected)
    image, mode, _ = decode_image(ppm16(rgb[..., 0], maxval))
    assert mode == "I;16" and image.dtype == np.uint16 and np.array_equal(image, expected[..., 0])
    assert np.array_equal(decode(ppm16(rgb, maxval))[0], (expected >> 8).astype(np.uint8))  # training reads 8 bits


@pytest.mark.parametrize("channels,mode", [(2, "LA;16"), (3, "RGB;16"), (4, "RGBA;16")])
def test_16_bit_colour_jpeg_2000_is_read_at_16_bits(channels, mode):
    import imagecodecs

    deep = np.ascontiguousarray(DEEP[..., :channels])
    for codec in ("JP2", "J2K"):  # the boxed file and the bare codestream
        image, src_mode, _ = decode_image(imagecodecs.jpeg2k_encode(deep, level=0, codecformat=codec))
        assert src_mode == mode and image.dtype == np.uint16 and np.array_equal(image, deep)
    twelve = deep >> 4  # 12 bits of precision are shifted to 16, as Pillow does for a gray JPEG 2000
    image, _, _ = decode_image(imagecodecs.jpeg2k_encode(twelve, level=0, bitspersample=12))
    assert np.array_equal(image, twelve << 4)


def test_8_bit_ppm_and_jpeg_2000_stay_8_bit():
    import imagecodecs

    rgb = (DEEP[..., :3] >> 8).astype(np.uint8)
    for data in (b"P6\n13 21\n255\n" + rgb.tobytes(), imagecodecs.jpeg2k_encode(rgb, level=0)):
        image, mode, _ = decode_image(data)
        assert mode == "RGB" and image.dtype == np.uint8 and np.array_equal(image, rgb)


def test_damaged_16_bit_ppm_and_jpeg_2000_are_image_errors():
    import imagecodecs

    ppm, jp2 = ppm16(DEEP[..., :3]), imagecodecs.jpeg2k_encode(np.ascontiguousarray(DEEP[..., :3]), level=0)
    with pytest.raises(ImageError, match=r"cannot decode PPM data \(truncated: 1631 of 1638 bytes"):
        decode_image(ppm[:-7])
    with pytest.raises(ImageError, match="cannot decode JPEG2000 data"):
        decode_image(jp2[:len(jp2) // 2])


def test_max_pixels_is_the_only_size_limit_and_its_refusal_names_size_limit_and_flag(monkeypatch):
    """Pillow's own bomb limit (89.5 MP; here lowered so a small file stands for a 96 MP scan) must not
    refuse what --max-pixels allows, nor call a valid file corrupt."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 60x40 = 2,400 pixels: "over" Pillow's limit, twice
    scan = np.tile(np.arange(60, dtype=np.uint8), (40, 1))
    image, mode, _ = decode_image(png_bytes(scan), max_pixels=10_000)
    assert np.array_equal(image, scan) and mode == "L"
    assert PILImage.MAX_IMAGE_PIXELS == 1000  # Pillow's setting is left as it was
    with pytest.raises(ImageError) as err:
        decode_image(png_bytes(scan), max_pixels=2_000)
    assert str(err.value) == ("refused: 60x40 = 2,400 pixels is over the limit of 2,000 "
                              "(decompression bomb guard; --max-pixels sets it)")
