"""Restoring one image with a trained model: the pure-PyTorch core that every pipeline calls.

Channel policy when the image and the model disagree: a grayscale model restores a colour image
channel by channel; a colour model restores a grayscale image as gray replicated to RGB and averaged
back. Alpha channels are copied through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

import torch.nn.functional as F

from raeae.bands import is_large, restore_large, sample
from raeae.corrupt import noise_level
from raeae.images import join_alpha, split_alpha
from raeae.jpeg import BLOCK, PHASE_STEP, JpegFinding, context, quality_of
from raeae.model import DenseAutoencoder
from raeae.patches import TileGrid, restore_tiles
from raeae.settings import TILE_BATCH, Blend, Precision, default_stride, fast_bf16  # noqa: F401 - re-exported


# The pixel types an image may have, and the value that stands for 1.0 (white) in each: 8-bit images,
# and 16 bits a channel (gray scans, microscopy, X-rays; colour masters), restored and written back at 16.
PIXEL_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 or uint16 H×W or H×W×C -> float (C, H, W) in [0, 1]."""
    if image.dtype == np.uint8:
        t = torch.from_numpy(np.array(image, copy=True)).float()
    else:
        t = torch.from_numpy(image.astype(np.float32))  # torch has no general uint16 arithmetic
    t = t.div_(PIXEL_MAX[image.dtype])
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def to_pixels(t: torch.Tensor, squeeze: bool, dtype: np.dtype = np.dtype(np.uint8)) -> np.ndarray:
    """float (C, H, W) -> ``dtype`` (uint8 or uint16) H×W×C (or H×W), rounding to nearest."""
    dtype = np.dtype(dtype)
    scaled = t.clamp(0.0, 1.0).mul(PIXEL_MAX[dtype]).add_(0.5)
    if dtype == np.uint8:
        a = scaled.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    else:
        a = scaled.to(torch.int32).permute(1, 2, 0).cpu().numpy().astype(dtype)
    return a[..., 0] if squeeze else a


@torch.inference_mode()
def _dihedral_views(batch: torch.Tensor):
    """The 8 flips/rotations of a batch ``(B, C, H, W)``, each with its inverse."""
    for k in range(4):
        for flip in (False, True):
            def fwd(t, k=k, flip=flip):
                t = torch.rot90(t, k, dims=(2, 3))
                return torch.flip(t, dims=(3,)) if flip else t

            def inv(t, k=k, flip=flip):
                t = torch.flip(t, dims=(3,)) if flip else t
                return torch.rot90(t, -k, dims=(2, 3))
            yield fwd, inv


def _grid_views(batch: torch.Tensor):
    """The 4 flips of a batch ``(B, C, H, W)`` whose JPEG grid starts at its corner, each with its inverse.
    A flipped JPEG is a JPEG of the flipped image (same tables, blocks still 8×8 and 16×16 for chroma),
    but its grid now starts at the far edge's phase: each view is replicate-padded on the top and left
    so that the grid starts at its corner again. Rotations would transpose the quantisation tables."""
    h, w = batch.shape[-2:]
    for flip_rows in (False, True):
        for flip_cols in (False, True):
            dims = [d for d, flipped in ((2, flip_rows), (3, flip_cols)) if flipped]
            py, px = (-h) % 16 if flip_rows else 0, (-w) % 16 if flip_cols else 0

            def fwd(t, dims=dims, py=py, px=px):
                t = torch.flip(t, dims) if dims else t
                return F.pad(t, (px, 0, py, 0), mode="replicate") if py or px else t

            def inv(t, dims=dims, py=py, px=px):
                t = t[..., py:, px:]
                return torch.flip(t, dims) if dims else t
            yield fwd, inv


def _gray(image: np.ndarray) -> bool:
    """Whether an H×W or H×W×C image is gray (L, or LA: alpha is not restored)."""
    return image.ndim == 2 or image.shape[2] in (1, 2)


def _as_batch(model: DenseAutoencoder, image: np.ndarray, device: torch.device):
    """The channel policy: ``image`` (uint8, or uint16) as the ``(B, C, H, W)`` batch the model restores,
    and the function that turns the restored batch back into an image of the input's shape and type."""
    if image.dtype not in PIXEL_MAX:
        raise TypeError(f"expected a uint8 or uint16 image, got {image.dtype}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected an H×W or H×W×C image, got shape {image.shape}")
    colour, alpha = split_alpha(image)
    gray_in = _gray(image)
    x = to_tensor(colour).to(device)  # (C, H, W)
    if model.config.channels == 1:
        batch = x.unsqueeze(1)  # every channel is a grayscale image of its own
    elif gray_in:
        batch = x.expand(3, -1, -1).unsqueeze(0)
    else:
        batch = x.unsqueeze(0)

    def finish(out: torch.Tensor) -> np.ndarray:
        if model.config.channels == 1:
            y = out.squeeze(1)
        elif gray_in:
            y = out[0].mean(dim=0, keepdim=True)
        else:
            y = out[0]
        restored = to_pixels(y, squeeze=colour.ndim == 2, dtype=image.dtype)
        if colour.ndim == 3 and restored.ndim == 2:
            restored = restored[..., None]
        return join_alpha(restored, alpha)

    return batch, finish


# Images with at most this many tiles are packed together into shared forward passes; larger ones
# go alone, in bands of tile rows (bounded memory). 8,192 colour tiles of 13×13 are 16.6 MB of input:
# every buffer stays below the 32 MB up to which a raeae worker's allocator reuses freed memory
# (raeae.worker), so the pack and its outputs never cost fresh, kernel-zeroed pages.
PACK_TILES = 8192


def _jpeg_layout(model: DenseAutoencoder, batch: torch.Tensor, finding: JpegFinding | None, stride: int):
    """How an image is tiled: ``(batch, stride, origin, scale)``. A ``jpeg_input`` model restores an
    image with JPEG damage (``finding``) in tiles at stride :data:`PHASE_STEP` on the block grid: the
    batch is replicate-padded on the top and left so the grid starts at a tile corner (``origin``, the
    padding, is cut off afterwards) and every tile is told its phase. Anything else keeps ``stride``."""
    if finding is None or finding.scale <= 0 or not model.config.jpeg_input:
        return batch, stride, (0, 0), 0.0
    sy, sx = (-finding.offset[0]) % BLOCK, (-finding.offset[1]) % BLOCK
    if sy or sx:
        batch = F.pad(batch, (sx, 0, sy, 0), mode="replicate")
    return batch, PHASE_STEP, (sy, sx), finding.scale


@torch.inference_mode()
def restore_arrays(model: DenseAutoencoder, images: list[np.ndarray], stride: int | None = None,
                   batch_size: int = TILE_BATCH, device: torch.device | str | None = None,
                   blend: Blend = Blend.GAUSSIAN, ensemble: bool = False,
                   pack_tiles: int = PACK_TILES, precision: Precision = Precision.AUTO,
                   on_forward: Callable[[float], None] | None = None,
                   noise_level: float | None = None,
                   on_sigma: Callable[[list[float | None]], None] | None = None,
                   jpeg: list[JpegFinding | None] | None = None, bands: bool = True) -> list[np.ndarray]:
    """Restore many uint8 (or uint16) images (each H×W or H×W×1..4, any size); returns each restored,
    same shape and type.

    The tiles of small images are packed into shared forward passes of up to ``batch_size`` rows of
    the network (a tile is one row, or three for an opponent-colour model, one per plane): a 64×64
    image is only ~100 tiles of 13×13, too few for an efficient matrix multiply on its own.
    The result is the same as restoring each image alone. With ``ensemble`` each image is restored in
    its 8 flips/rotations and the results averaged (8× the work; an image restored on its JPEG grid in its 4
    flips, each tiled on the flipped grid: 4×). ``precision`` sets the number format
    of the forward passes. ``on_forward``, if given, receives the seconds of each forward pass (the
    part of the work a faster accelerator shrinks; tiling and stitching around it stay). A model that
    takes the noise level (``noise_input``) is told ``noise_level`` (σ, 0-255 scale) for every image,
    or by default each image's own estimate (:func:`noise_level_of`); ``on_sigma``, if given, receives
    the σ each image was told, in order (None for a model that takes none). A model that takes the JPEG
    damage (``jpeg_input``) is told each image's ``jpeg`` finding (None or scale 0: none), tile by tile
    on the block grid (:func:`_jpeg_layout`). Images over :data:`raeae.bands.BAND_PIXELS` are restored band by band
    (``bands``; :mod:`raeae.bands`), so memory follows the band, not the image."""
    findings = jpeg or [None] * len(images)
    if bands and any(is_large(image) for image in images):
        kwargs = dict(batch_size=batch_size, device=device, blend=blend, ensemble=ensemble, pack_tiles=pack_tiles,
                      precision=precision, on_forward=on_forward)
        return _restore_with_large(model, images, stride or default_stride(model.config.patch_size), findings,
                                   noise_level, on_sigma, kwargs)
    cfg = model.config
    # batch_size counts the network's rows (the unit of --tile-batch, what sizes the activations); an
    # opponent-colour model runs each tile as three, so a pass holds a third as many of its tiles
    tiles_per_pass = max(1, batch_size // cfg.rows_per_patch)
    stride = stride or default_stride(cfg.patch_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    window = blend.window(cfg.patch_size)
    autocast = precision.autocast(device)

    def fn(flat: torch.Tensor, level: torch.Tensor | float | None, ctx: torch.Tensor | None = None) -> torch.Tensor:
        t0 = time.perf_counter()
        with autocast:
            out = model(flat, level=level, jpeg=ctx).float().clamp_(0.0, 1.0)
        if on_forward is not None:
            if device.type != "cpu":
                torch.accelerator.synchronize(device)  # accelerators run asynchronously: wait to time
            on_forward(time.perf_counter() - t0)
        return out

    prepared = [_as_batch(model, image, device) for image in images]
    sigmas = [_sigma(model, batch, noise_level) for batch, _ in prepared]
    if on_sigma is not None:
        on_sigma(sigmas)
    levels = [_level(model, image, sigma) for image, sigma in zip(images, sigmas)]
    layouts = [_jpeg_layout(model, batch, f, stride) for (batch, _), f in zip(prepared, findings)]
    results: list[np.ndarray | None] = [None] * len(images)
    pack: list[tuple[int, torch.Tensor, TileGrid]] = []

    def contexts(i: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor | None:
        """Image ``i``'s tiles' JPEG context (None for a model that takes none)."""
        if not cfg.jpeg_input:
            return None
        # positions in the padded batch, whose corner (0, 0) is a block corner (see _jpeg_layout)
        return context(layouts[i][3], ys, xs).to(device)

    def finish(i: int, out: torch.Tensor) -> np.ndarray:
        sy, sx = layouts[i][2]
        return prepared[i][1](out[:, :, sy:, sx:])

    def flush() -> None:
        if not pack:
            return
        x = torch.cat([grid.tiles(grid.pad(batch)) for _, batch, grid in pack])
        # each tile is told its own image's noise level (noise_input models; else there is none)
        lv = (torch.cat([torch.full((grid.count,), levels[i], device=device) for i, _, grid in pack])
              if cfg.noise_input else None)
        ctx = torch.cat([contexts(i, *grid.positions()) for i, _, grid in pack]) if cfg.jpeg_input else None
        out = torch.cat([fn(x[j:j + tiles_per_pass], None if lv is None else lv[j:j + tiles_per_pass],
                            None if ctx is None else ctx[j:j + tiles_per_pass])
                         for j in range(0, x.shape[0], tiles_per_pass)])
        start = 0
        for i, batch, grid in pack:
            results[i] = finish(i, grid.blend(out[start:start + grid.count], batch, window))
            start += grid.count
        pack.clear()

    for i, (batch, image_stride, _, scale) in enumerate(layouts):
        grid = TileGrid.of(batch, cfg.patch_size, image_stride, cfg.margin)
        if ensemble or grid.count > pack_tiles:
            def one(b: torch.Tensor, i=i, s=image_stride) -> torch.Tensor:
                return restore_tiles(lambda t, ys, xs: fn(t, levels[i], contexts(i, ys, xs)), b, cfg.patch_size,
                                     s, batch_size=tiles_per_pass, blend=blend, positions=True, margin=cfg.margin)
            views = (list(_dihedral_views(batch)) if scale == 0 else list(_grid_views(batch))) if ensemble \
                else [(lambda t: t, lambda t: t)]
            out = sum(inv(one(fwd(batch))) for fwd, inv in views) / len(views)
            results[i] = finish(i, out)
            continue
        if sum(g.count for _, _, g in pack) + grid.count > pack_tiles:
            flush()
        pack.append((i, batch, grid))
    flush()
    return results


def _restore_with_large(model: DenseAutoencoder, images: list[np.ndarray], stride: int,
                        findings: list[JpegFinding | None], noise_level: float | None,
                        on_sigma: Callable[[list[float | None]], None] | None, kwargs: dict) -> list[np.ndarray]:
    """:func:`restore_arrays` for a list holding large images: the others together as usual, each
    large one band by band, told the σ estimated on a sample of it; σs reported in order."""
    large = [i for i, image in enumerate(images) if is_large(image)]
    small = [i for i in range(len(images)) if i not in set(large)]
    results: list[np.ndarray | None] = [None] * len(images)
    sigmas: list[float | None] = [None] * len(images)
    told: list[float | None] = []
    restored = restore_arrays(model, [images[i] for i in small], stride, jpeg=[findings[i] for i in small],
                              noise_level=noise_level, on_sigma=told.extend, bands=False, **kwargs) if small else []
    for i, out, sigma in zip(small, restored, told):
        results[i], sigmas[i] = out, sigma

    def one(m: DenseAutoencoder, band: np.ndarray, level: float | None, finding: JpegFinding | None) -> np.ndarray:
        return restore_arrays(m, [band], stride, noise_level=level, jpeg=[finding], bands=False, **kwargs)[0]

    for i in large:
        sigmas[i] = _sigma(model, _as_batch(model, sample(images[i]), torch.device("cpu"))[0], noise_level)
        results[i] = restore_large(one, model, images[i], stride, sigmas[i], findings[i])
    if on_sigma is not None:
        on_sigma(sigmas)
    return results


def noise_level_of(batch: torch.Tensor) -> float:
    """The noise std (0-255 scale) of an image batch ``(B, C, H, W)`` in [0, 1], all its planes taken
    together: a scan's channels come from the same sensor, and more details make a steadier median."""
    return noise_level(batch.reshape(-1, *batch.shape[-2:]).float()) * 255.0


def _sigma(model: DenseAutoencoder, batch: torch.Tensor, noise_level: float | None) -> float | None:
    """The σ (0-255 scale) a ``noise_input`` model is told about the image in ``batch``: ``noise_level``
    if given, else the image's own estimate; None for a model that takes no noise level."""
    if not model.config.noise_input:
        return None
    return noise_level if noise_level is not None else noise_level_of(batch)


def _level(model: DenseAutoencoder, image: np.ndarray, sigma: float | None) -> float | None:
    """``image``'s σ (:func:`_sigma`) as the network input: a noise std in [0, 1] units."""
    if sigma is None:
        return None
    if model.config.channels == 3 and _gray(image):
        sigma *= gray_level_factor()
    return sigma / 255.0


def gray_level_factor() -> float:
    """What a colour model is told of a gray image's σ, as a multiple of it. A gray image replicated
    to RGB has the same noise in all three channels, not independent noise: its luma plane carries
    all of σ, where white RGB noise would leave σ/√3 in it."""
    return 3 ** 0.5


def restore_array(model: DenseAutoencoder, image: np.ndarray, stride: int | None = None,
                  batch_size: int = TILE_BATCH, device: torch.device | str | None = None,
                  blend: Blend = Blend.GAUSSIAN, ensemble: bool = False,
                  precision: Precision = Precision.AUTO, noise_level: float | None = None,
                  jpeg: JpegFinding | None = None) -> np.ndarray:
    """Restore a uint8 (or uint16) image (H×W, H×W×1..4) of any size; returns the same shape and type. With
    ``ensemble`` the image is restored in its 8 flips/rotations and the results averaged (8× the work).
    ``jpeg``: the image's JPEG damage, for a model told it (``jpeg_input``)."""
    return restore_arrays(model, [image], stride, batch_size, device, blend, ensemble, precision=precision,
                          noise_level=noise_level, jpeg=[jpeg])[0]


def pick_model(models: list[DenseAutoencoder], image: np.ndarray, jpeg: JpegFinding | None = None) -> DenseAutoencoder:
    """Of several models (``builtin:auto``), the one made for this image. For JPEG damage (``jpeg``, scale
    above 0): of the models told it (``jpeg_input``), the one that learnt the narrowest range of qualities
    holding the image's (``jpeg_qualities``; none holding it: of all), gray or colour; where the image shows
    noise from before its compression (:func:`_shows_noise`), only of the models that learnt such noise
    (``jpeg_noise``). Else among the others the colour model for colour images (RGB, RGBA), the gray model
    for gray ones (L, LA). A single model takes everything."""
    if len(models) == 1:
        return models[0]
    is_jpeg = jpeg is not None and jpeg.scale > 0
    pool = [m for m in models if m.config.jpeg_input == is_jpeg] or models
    if is_jpeg:
        quality = quality_of(jpeg.scale)
        noise_free = [m for m in pool if not m.jpeg_noise and m.jpeg_qualities[0] <= quality <= m.jpeg_qualities[1]]
        if noise_free and _shows_noise(noise_free[0], image):
            pool = [m for m in pool if m.jpeg_noise] or pool
        holding = [m for m in pool if m.jpeg_qualities[0] <= quality <= m.jpeg_qualities[1]] or pool
        narrowest = min(hi - lo for lo, hi in (m.jpeg_qualities for m in holding))
        pool = [m for m in holding if m.jpeg_qualities[1] - m.jpeg_qualities[0] == narrowest]
    want = 1 if _gray(image) else 3
    return next((m for m in pool if m.config.channels == want), pool[0])


# The σ (0-255) restore estimates, above which a JPEG shows noise from before its compression. On JPEGs of
# quality 10-50 of the training photographs (CBSD432, runs/release11/sigma_calib.py) the estimate is 0 for
# 90 % of noise-free ones and at most 1.03 for 99 %, while 48 % of those given noise of σ 5-30 first lie
# above 1.0 (quantisation removes most of the noise from the rest).
JPEG_NOISE_SIGMA = 1.0


def _shows_noise(model: DenseAutoencoder, image: np.ndarray) -> bool:
    """Whether a JPEG ``image`` shows noise from before its compression: its σ as ``model`` would be told it
    (of a central sample of a large image, as restore estimates it)."""
    return noise_level_of(_as_batch(model, sample(image), torch.device("cpu"))[0]) > JPEG_NOISE_SIGMA


def restore_image(model: DenseAutoencoder, image: np.ndarray, stride: int | None = None,
                  jpeg: JpegFinding | None = None) -> np.ndarray:
    """Public API: a uint8 (or uint16, 16 bits a channel) numpy image of any size in, the restored image of the same
    shape and type out. A model told the JPEG damage (``builtin:jpeg``) is told ``jpeg``, or what the
    image's own blocks show (:func:`raeae.jpeg.estimate_jpeg`)."""
    if jpeg is None and model.config.jpeg_input and image.dtype == np.uint8:
        from raeae.bands import sample
        from raeae.jpeg import estimate_jpeg

        jpeg = estimate_jpeg(sample(split_alpha(image)[0]))
    return restore_array(model, image, stride=stride, jpeg=jpeg)
