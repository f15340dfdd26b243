"""Decoding stored images to uint8 (or uint16) arrays and encoding restored ones, with one documented policy.

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
I;16 (16-bit gray)     16-bit gray                                  16-bit gray PNG
LA;16 RGB;16 RGBA;16   16-bit colour (or gray), alpha copied        16-bit PNG (48 or 64 bits
(16 bits a channel:    (Pillow would read them at 8 bits, so they   a pixel)
PNG, TIFF, JPEG 2000,  are read with imagecodecs: libpng, libtiff,
PPM)                   OpenJPEG; a PPM's samples directly). Up to
                       16 bits of precision are scaled to 16 (a
                       12-bit JPEG 2000, a PPM of maxval 4095)
I (a PGM of more than  16-bit gray (Pillow scales its maxval to     16-bit gray PNG
8 bits)                65535)
I / F                  scaled to 8-bit gray (16-bit counts >> 8;    8-bit gray PNG
                       floats from 0 to 1 x 255; NaN refused)
1 (bilevel)            gray 0/255                                   8-bit gray PNG
CMYK / YCbCr / LAB     converted to RGB by Pillow                   RGB PNG
=====================  ===========================================  ==========================

What a restored PNG keeps of its source besides the pixels (:class:`SourceInfo`): the embedded
colour profile (ICC), so colours display as they did in the source (an Adobe RGB or ProPhoto scan
shown as sRGB looks dull or garish); the EXIF block as it was, so a camera JPEG stored on its side
still displays upright (its Orientation tag) and keeps its date, camera and exposure; and the
resolution (DPI), so a restored scan prints at its size. A profile that no longer fits the restored
pixels (CMYK or Lab sources, which become RGB) is dropped. TIFF tags other than the resolution are
not carried over.

Files of several frames (multi-page TIFF, animated GIF, PNG or WebP) are refused: one output row
holds one image. A JPEG with extra pictures (MPO: previews, depth or gain maps) gives its first.

Images over ``max_pixels`` are refused from the header, before any pixel is decoded (decompression
bombs). Every failure raises :class:`ImageError` with a message fit for an ``error`` column.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

try:  # HEIC/HEIF (phone photographs): a dependency of raeae, absent only where torch alone is installed
    # (bench/gpu_check.py's GPU machine), where such files would read as "not a recognised image format"
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover
    register_heif_opener = None
if register_heif_opener is not None:
    register_heif_opener()  # libheif applies the file's rotation: pixels come out upright, EXIF says 1

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: beyond any photograph, below what a 64 GiB worker survives


class ImageError(ValueError):
    """A file is not an image we can restore; the message says why."""


SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode but 16-bit gray (kept as it is) -> L, LA, RGB or RGBA, by the policy in the
    module docstring."""
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageError(f"{img.mode} image has NaN or infinite pixel values")
        top = a.max(initial=0)
        # the three conventions of such files: 16-bit counts, 8-bit levels, and floats from 0 to 1
        # (a scientific scan's usual range, which the 8-bit reading would turn into black)
        scale = 255.0 / 65535.0 if top > 255 else 255.0 if img.mode == "F" and top <= 1 else 1.0
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


@dataclass(frozen=True)
class SourceInfo:
    """What a restored PNG keeps of its source besides the pixels (see the module docstring)."""

    icc_profile: bytes | None = None  # ICC colour profile, only when it fits the decoded pixels
    exif: bytes | None = None  # the EXIF block, as stored (never parsed: a damaged one stays as it was)
    dpi: tuple[float, float] | None = None  # resolution, pixels per inch (x, y)


# An ICC profile's data colour space (header bytes 16-20) that fits each decoded array's channels
_ICC_SPACE = {1: b"GRAY", 2: b"GRAY", 3: b"RGB ", 4: b"RGB "}


def source_info(img: Image.Image, image: np.ndarray) -> SourceInfo:
    """The metadata of opened source ``img`` that still describes its decoded pixels ``image``."""
    icc = img.info.get("icc_profile") or None
    if icc is not None and icc[16:20] != _ICC_SPACE[channels(image)]:
        icc = None  # e.g. a CMYK profile on pixels Pillow converted to RGB
    exif = img.info.get("exif") or None
    dpi = img.info.get("dpi")
    try:
        dpi = (float(dpi[0]), float(dpi[1])) if dpi else None
    except (TypeError, ValueError, IndexError):
        dpi = None
    if dpi is not None and not all(math.isfinite(d) and d > 0 for d in dpi):
        dpi = None  # a zero, negative or NaN density in a damaged header is no resolution at all
    return SourceInfo(bytes(icc) if icc else None, bytes(exif) if exif else None, dpi)


def _frames(img: Image.Image) -> int:
    """The images a file holds that one restored PNG would lose: pages or an animation's frames. Not
    counted: an MPO's extra pictures (a JPEG's previews, depth or gain maps, which viewers ignore: the
    first picture is the photograph) and a TIFF's reduced-resolution copies (thumbnails a scanner adds,
    NewSubfileType bit 0)."""
    n = getattr(img, "n_frames", 1)
    if n <= 1 or img.format == "MPO":
        return 1
    if img.format != "TIFF":
        return n
    full = 0
    for i in range(n):
        img.seek(i)
        full += not int(img.tag_v2.get(254, 0)) & 1
    img.seek(0)
    return full


# The first bytes of each format we read (a file's "magic number")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = ((_PNG_SIGNATURE, "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
               (b"\xffO\xffQ", "JPEG 2000"))


def signature(data: bytes) -> str | None:
    """The image format ``data``'s first bytes announce, if any (HEIF and AVIF by their ``ftyp`` brand,
    WebP by its RIFF form type)."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "AVIF" if brand in (b"avif", b"avis") else "HEIF" if brand[:3] in (b"hei", b"hev", b"mif") else None
    return None


def _tiff_layout(data: bytes) -> str | None:
    """What a TIFF that Pillow cannot open holds, e.g. ``float32 samples, 480x640x3``, from its header
    alone (no pixel is decoded: the file has passed no size check); None if tifffile cannot read the
    header either (then the file is damaged)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            return f"{page.dtype} samples, {'x'.join(map(str, page.shape))}"
    except Exception:  # noqa: BLE001 - unreadable to tifffile too: truncated or corrupt
        return None


def _unreadable(data: bytes, exc: Exception) -> str:
    """Why ``data`` could not even be opened, for the error column."""
    unidentified = isinstance(exc, Image.UnidentifiedImageError)
    why = "" if unidentified else f"{type(exc).__name__}: {exc}; "
    kind = signature(data)
    layout = _tiff_layout(data) if kind == "TIFF" else None
    if layout:  # a whole TIFF whose samples Pillow does not read (float or signed colour, 32-bit...)
        return f"TIFF of {layout}: a sample type raeae does not restore ({len(data)} bytes)"
    if kind:  # its first bytes say what it is, yet its header cannot be read: cut short or garbled
        return f"truncated or corrupt {kind} file: its header cannot be read ({why}{len(data)} bytes)"
    if unidentified:
        return f"not a recognised image format (starts with {data[:8]!r}, {len(data)} bytes)"
    return f"not a readable image ({why}{len(data)} bytes)"


_PILLOW_LIMIT = threading.Lock()


def _open_header(data: bytes) -> Image.Image:
    """Pillow's lazy open (the header only), with Pillow's own decompression-bomb limit (89.5 MP, a
    warning, then an error at twice that) out of the way: the caller checks the size against
    ``max_pixels``, the user's one limit, before any pixel is decoded. The limit is a module global
    of Pillow's, so it is lifted for this open alone, under a lock."""
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Bytes of a stored image -> (uint8 array H×W or H×W×C with C in 2, 3, 4; source Pillow mode).
    8 bits always (16 bits a channel are scaled down): what training, evaluation and the demo read."""
    image, mode, _ = decode_image(data, max_pixels)
    return (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image, mode


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str, SourceInfo]:
    """What a restore reads: like :func:`decode`, but 16 bits a channel stay uint16 (16-bit gray H×W,
    16-bit colour PNG and TIFF H×W×C), so a 16-bit scan or master is restored and written back at 16
    bits; plus what the restored PNG keeps of the source (:class:`SourceInfo`)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        img = _open_header(data)
    except Exception as exc:  # noqa: BLE001 - any failure to identify means "not an image"
        raise ImageError(_unreadable(data, exc)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"refused: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
                         f"(decompression bomb guard; --max-pixels sets it)")
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    try:
        frames = _frames(img)
    except Exception as exc:  # noqa: BLE001 - a broken frame table is a broken file
        raise ImageError(f"cannot read the frames of this {img.format or 'image'} ({type(exc).__name__}: {exc})") from None
    if frames > 1:
        raise ImageError(f"{img.format} with {frames} frames (pages or animation): one row restores one "
                         f"image; split the frames into files of their own")
    deep = _deep_mode(data, img)
    if deep is not None:
        arr = _read_deep(data, img, deep)
        if arr is not None:
            return arr, deep, source_info(img, arr)
    mode = img.mode
    try:
        img.load()
        if img.mode in SIXTEEN_BIT_GRAY or _deep_pgm(img):
            arr = np.asarray(img, dtype=np.uint16)
            mode = "I;16"
        else:
            arr = np.asarray(_to_8bit(img), dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(f"cannot decode {img.format or 'image'} data ({type(exc).__name__}: {exc})") from None
    return arr, mode, source_info(img, arr)


# Deep colour: 16 bits a channel with colour or alpha. Pillow has no such mode (it reads these files at 8
# bits and cannot write them), so their pixels go through imagecodecs (libpng, libtiff) while Pillow
# still reads the header: size, frames, profile, EXIF, DPI. PNG colour types with 16-bit samples:
_DEEP_PNG = {4: "LA;16", 2: "RGB;16", 6: "RGBA;16"}


def _deep_mode(data: bytes, img: Image.Image) -> str | None:
    """``LA;16``, ``RGB;16`` or ``RGBA;16`` for a PNG, TIFF, JPEG 2000 or PPM of more than 8 unsigned bits
    a channel with colour or alpha (read as such by :func:`_read_deep`); None for anything Pillow reads
    in full itself."""
    if img.format == "PNG":  # IHDR, always the first chunk: bit depth at byte 24, colour type at 25
        return _DEEP_PNG.get(data[25]) if len(data) > 25 and data[24] == 16 else None
    if img.mode not in ("LA", "RGB", "RGBA"):
        return None
    if img.format == "TIFF":
        tags = img.tag_v2
        sample_format = tags.get(339, 1)  # 1: unsigned integers; 2, 3: signed, floating point
        unsigned = all(f == 1 for f in (sample_format if isinstance(sample_format, tuple) else (sample_format,)))
        if unsigned and set(tags.get(258, ())) == {16} and tags.get(262) in (1, 2):  # gray or RGB samples
            return f"{img.mode};16"
    if img.format == "JPEG2000" and 8 < (_jpeg2k_precision(data) or 0) <= 16:
        return f"{img.mode};16"
    if img.format == "PPM" and img.mode == "RGB" and (_netpbm_header(data) or (0,) * 5)[3] > 255:
        return "RGB;16"
    return None


def _deep_pgm(img: Image.Image) -> bool:
    """A PGM of more than 8 bits: Pillow reads it as 32-bit ``I``, its maxval scaled to 65535."""
    return img.format == "PPM" and img.mode == "I"


def _jpeg2k_precision(data: bytes) -> int | None:
    """Bits per sample of a JPEG 2000 codestream's first component, from its SIZ marker segment (always
    straight after the start of the codestream: SOC FF4F, SIZ FF51); None if absent or signed."""
    i = data.find(b"\xff\x4f\xff\x51")
    ssiz = i + 4 + 2 + 2 + 4 * 8 + 2  # past SOC, SIZ, Lsiz, Rsiz, the 8 sizes and offsets, Csiz
    if i < 0 or ssiz >= len(data) or data[ssiz] & 0x80:
        return None
    return (data[ssiz] & 0x7F) + 1


def _netpbm_header(data: bytes) -> tuple[bytes, int, int, int, int] | None:
    """A binary PGM/PPM's (magic, width, height, maxval, offset of the first sample), or None: the
    header is three decimal numbers after P5 or P6, separated by whitespace and ``#`` comments, then one
    whitespace byte."""
    if data[:2] not in (b"P5", b"P6"):
        return None
    numbers, i = [], 2
    while len(numbers) < 3 and i < len(data):
        if data[i:i + 1] == b"#":
            i = data.find(b"\n", i)
            i = len(data) if i < 0 else i
        elif data[i:i + 1].isspace():
            i += 1
        else:
            j = i
            while j < len(data) and data[j:j + 1].isdigit():
                j += 1
            if j == i:
                return None
            numbers.append(int(data[i:j]))
            i = j
    if len(numbers) < 3 or i >= len(data) or not data[i:i + 1].isspace():
        return None
    return data[:2], numbers[0], numbers[1], numbers[2], i + 1


def _read_netpbm_deep(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """A PPM of maxval 256-65535 (two big-endian bytes a sample) as uint16 H×W×3, scaled to 65535 as
    Pillow scales a PGM's (rounded); None unless its header agrees with the ``size`` Pillow read."""
    magic, w, h, maxval, offset = _netpbm_header(data) or (b"", 0, 0, 0, 0)
    if magic != b"P6" or not 255 < maxval < 65536 or (w, h) != size:
        return None
    n = w * h * 3
    if len(data) - offset < 2 * n:
        raise ImageError(f"cannot decode PPM data (truncated: {len(data) - offset} of {2 * n} bytes of samples)")
    raw = np.frombuffer(data, dtype=">u2", count=n, offset=offset).astype(np.uint32).reshape(h, w, 3)
    return ((raw * 65535 + maxval // 2) // maxval).astype(np.uint16)


def _read_deep(data: bytes, img: Image.Image, mode: str) -> np.ndarray | None:
    """A deep-colour file's pixels as uint16 H×W×C (C from its ``mode``, e.g. 3 for ``RGB;16``); None
    for a layout this reader does not return so (the caller then reads it at 8 bits, as before)."""
    import imagecodecs  # only here: ~0.07 s to import, and most archives hold no such file

    if img.format == "PPM":
        return _read_netpbm_deep(data, img.size)
    try:
        if img.format == "PNG":
            arr = imagecodecs.png_decode(data)
        elif img.format == "JPEG2000":
            # up to 16 bits of precision, scaled to 16 by a shift, as Pillow does for a gray JPEG 2000
            arr = imagecodecs.jpeg2k_decode(data) << np.uint16(16 - (_jpeg2k_precision(data) or 16))
        else:
            arr = imagecodecs.tiff_decode(data)  # the first page: files of several pages are refused before
            if img.tag_v2.get(284) == 2:  # planar configuration: one plane per channel
                arr = np.moveaxis(arr, 0, -1)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(f"cannot decode {img.format} data ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if arr.dtype != np.uint16 or arr.shape != (h, w, len(mode.split(";")[0])):
        return None
    return np.ascontiguousarray(arr)


def _png_chunks(png: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, data, CRC), in order."""
    chunks, i = [], len(_PNG_SIGNATURE)
    while i < len(png):
        end = i + 12 + int.from_bytes(png[i:i + 4], "big")
        chunks.append(png[i:end])
        i = end
    return chunks


def _encode_deep_png(image: np.ndarray, compress_level: int, info: SourceInfo) -> bytes:
    """uint16 H×W×C (C in 2, 3, 4) -> a 16-bit-a-channel PNG, with ``info``'s chunks as Pillow writes
    them for an 8-bit image: Pillow encodes them for a one-pixel image of the same channels, and they
    go in after the IHDR chunk (profile, EXIF and resolution all belong before the pixel data)."""
    import imagecodecs

    png = imagecodecs.png_encode(np.ascontiguousarray(image), level=compress_level)
    if info == SourceInfo():
        return png
    carrier = encode_png(np.zeros((1, 1, image.shape[2]), np.uint8), 0, info)
    extra = [c for c in _png_chunks(carrier) if c[4:8] not in (b"IHDR", b"IDAT", b"IEND")]
    ihdr, *rest = _png_chunks(png)
    return b"".join([_PNG_SIGNATURE, ihdr, *extra, *rest])


def encode_png(image: np.ndarray, compress_level: int = 1, info: SourceInfo | None = None) -> bytes:
    """uint8 H×W or H×W×C, or uint16 (16 bits a channel: gray, gray with alpha, RGB, RGBA) -> PNG bytes,
    with the source's ``info`` (colour profile, EXIF, DPI) when given. Level 1: PNG encoding dominates a
    restore loop's time at the default level 6, for files about 10 % larger."""
    info = info or SourceInfo()
    if image.dtype == np.uint16 and image.ndim == 3:
        return _encode_deep_png(image, compress_level, info)
    buf = io.BytesIO()  # Pillow writes no chunk for a None profile, EXIF or DPI
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level, icc_profile=info.icc_profile,
                                exif=info.exif, dpi=info.dpi)
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


def bits(image: np.ndarray) -> int:
    """Bits per channel: 8 (uint8), or 16 (uint16: 16-bit gray or colour)."""
    return image.dtype.itemsize * 8
