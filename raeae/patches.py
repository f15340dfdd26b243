"""Patches: random p×p training crops, and overlapping tiles for whole-image inference.

Images are tensors ``(C, H, W)`` (or batches ``(B, C, H, W)``). Inference cuts an image into
overlapping p×p tiles with stride s using :func:`torch.nn.functional.unfold`, runs the model on the
flattened tiles and puts them back with :func:`torch.nn.functional.fold`, averaging where tiles
overlap. There is no Python loop over tiles; a loop over horizontal bands of tiles bounds memory on
huge images.
"""

from __future__ import annotations

import enum
from typing import Callable

import torch
import torch.nn.functional as F

# A model on flattened patches: (N, C*p*p) -> (N, C*p*p).
PatchFn = Callable[[torch.Tensor], torch.Tensor]


def pad_to_patch(image: torch.Tensor, patch: int) -> torch.Tensor:
    """Replicate-pad a ``(C, H, W)`` image on the bottom/right so both sides are at least ``patch``."""
    _, h, w = image.shape
    if h >= patch and w >= patch:
        return image
    return F.pad(image.unsqueeze(0).float(), (0, max(0, patch - w), 0, max(0, patch - h)),
                 mode="replicate").squeeze(0).to(image.dtype)


class PatchSampler:
    """Draws random p×p patches from a fixed set of clean images, fresh ones every epoch.

    Images of equal size are stacked so a whole group is sampled with one indexing operation.
    Patches stay uint8 until a batch is made, to keep the training set small in memory.
    """

    def __init__(self, images: list[torch.Tensor], patch: int, patches_per_image: int = 0, min_patches: int = 0):
        if not images:
            raise ValueError("no training images")
        self.patch = patch
        groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for img in images:
            img = pad_to_patch(img, patch)
            groups.setdefault(tuple(img.shape), []).append(img)
        self.groups = [torch.stack(g) for g in groups.values()]
        self.patches_per_image = patches_per_image
        self.min_per_image = -(-min_patches // len(images))  # ceil: at least min_patches in all

    def per_image(self, group: torch.Tensor) -> int:
        """Patches per image per epoch; automatic = about one non-overlapping cover of the image."""
        if self.patches_per_image > 0:
            return self.patches_per_image
        return max(1, self.min_per_image, (group.shape[2] // self.patch) * (group.shape[3] // self.patch))

    def __len__(self) -> int:
        return sum(g.shape[0] * self.per_image(g) for g in self.groups)

    def mean_patch(self) -> torch.Tensor:
        """Mean clean patch ``(C, p, p)`` in [0, 1], from one epoch's worth of patches."""
        return self.sample(torch.Generator().manual_seed(0)).float().mean(0).div_(255.0)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """One epoch of patches ``(N, C, p, p)`` uint8, shuffled."""
        out = []
        p = self.patch
        for g in self.groups:
            n, _, h, w = g.shape
            k = n * self.per_image(g)
            if h == p and w == p:  # whole images are the patches: a permutation, no duplicates
                out.append(g[torch.randperm(n, generator=gen)] if k == n else
                           g[torch.randint(0, n, (k,), generator=gen)])
                continue
            idx = torch.randint(0, n, (k,), generator=gen)
            ys = torch.randint(0, h - p + 1, (k,), generator=gen)
            xs = torch.randint(0, w - p + 1, (k,), generator=gen)
            windows = g.unfold(2, p, 1).unfold(3, p, 1)  # (n, C, h-p+1, w-p+1, p, p), a view
            out.append(windows[idx, :, ys, xs])  # advanced indices first: (k, C, p, p)
        patches = torch.cat(out)
        return patches[torch.randperm(patches.shape[0], generator=gen)]


def dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip/rot90 per sample of a square batch ``(N, C, p, p)`` (the 8 symmetries of a square)."""
    t = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = x.clone()
    for k in range(1, 8):  # 8 vectorised ops per batch, not one per sample
        sel = t == k
        if sel.any():
            y = torch.rot90(x[sel], k % 4, dims=(2, 3))
            out[sel] = torch.flip(y, dims=(3,)) if k >= 4 else y
    return out


def _padded_size(n: int, patch: int, stride: int) -> int:
    """Smallest size >= max(n, patch) that a grid of tiles with this stride covers exactly."""
    m = max(n, patch)
    rem = (m - patch) % stride
    return m if rem == 0 else m + stride - rem


class Blend(enum.Enum):
    """How overlapping tiles' outputs are averaged into one pixel."""

    FLAT = "flat"  # every tile counts the same
    GAUSSIAN = "gaussian"  # tiles count more near their centre, where the model saw the most context

    def window(self, patch: int) -> torch.Tensor | None:
        """Per-pixel weights of one ``patch``×``patch`` tile (None: flat)."""
        if self is Blend.FLAT:
            return None
        d = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2
        g = torch.exp(-(d ** 2) / (2 * (patch / 4) ** 2))
        return g[:, None] * g[None, :]


def restore_tiles(fn: PatchFn, image: torch.Tensor, patch: int, stride: int,
                  batch_size: int = 4096, max_tiles: int = 65536, blend: Blend = Blend.FLAT) -> torch.Tensor:
    """Run ``fn`` over overlapping tiles of ``image`` ``(B, C, H, W)`` and blend them back.

    The image is replicate-padded on the bottom/right so the tile grid covers it, so any size from
    1×1 works. Where tiles overlap their outputs are averaged, weighted by ``blend``'s window. With an
    identity ``fn`` the result is the input (up to float rounding). At most ``max_tiles`` tiles are
    held at once.
    """
    if not 1 <= stride <= patch:
        raise ValueError(f"stride must be in [1, patch size {patch}], got {stride}")
    b, c, h, w = image.shape
    hp, wp = _padded_size(h, patch, stride), _padded_size(w, patch, stride)
    x = F.pad(image, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else image
    rows, cols = (hp - patch) // stride + 1, (wp - patch) // stride + 1
    band_rows = max(1, max_tiles // max(1, cols * b))
    acc = torch.zeros_like(x)
    weight = torch.zeros((1, 1, hp, wp), dtype=x.dtype, device=x.device)
    window = blend.window(patch)
    win = None if window is None else window.to(x.device, x.dtype).reshape(1, 1, patch * patch)
    for r0 in range(0, rows, band_rows):  # bands of tile rows, to bound memory on huge images
        r1 = min(rows, r0 + band_rows)
        y0, y1 = r0 * stride, (r1 - 1) * stride + patch
        band = x[:, :, y0:y1, :]
        tiles = F.unfold(band, patch, stride=stride)  # (B, C*p*p, L)
        n_tiles = tiles.shape[2]
        flat = tiles.transpose(1, 2).reshape(b * n_tiles, c * patch * patch)
        out = torch.cat([fn(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)])
        out = out.reshape(b, n_tiles, c * patch * patch).transpose(1, 2)
        ones = torch.ones((1, patch * patch, n_tiles), dtype=x.dtype, device=x.device)
        if win is not None:
            out = (out.reshape(b, c, patch * patch, n_tiles) * win.reshape(1, 1, -1, 1)).reshape_as(out)
            ones = ones * win.reshape(1, -1, 1)
        acc[:, :, y0:y1, :] += F.fold(out, (y1 - y0, wp), patch, stride=stride)
        weight[:, :, y0:y1, :] += F.fold(ones, (y1 - y0, wp), patch, stride=stride)
    return (acc / weight)[:, :, :h, :w]
