"""Patches: random p×p training crops, and overlapping tiles for whole-image inference.

Images are tensors ``(C, H, W)`` (or batches ``(B, C, H, W)``). Inference cuts an image into
overlapping p×p tiles with stride s using :func:`torch.nn.functional.unfold`, runs the model on the
flattened tiles and puts them back with :func:`torch.nn.functional.fold`, averaging where tiles
overlap. There is no Python loop over tiles; a loop over horizontal bands of tiles bounds memory on
huge images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from raeae.settings import Blend

# A model on flattened patches: (N, C*p*p) -> (N, C*p*p); with restore_tiles(..., positions=True) it
# also gets the tiles' top-left corners (rows, columns), for a model told where its tile lies (JPEG).
PatchFn = Callable[..., torch.Tensor]


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
    t = torch.randint(0, 8, (x.shape[0],), generator=gen, device=gen.device).to(x.device)
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


@dataclass(frozen=True)
class TileGrid:
    """Where the overlapping p×p tiles of a ``(B, C, H, W)`` batch lie: the batch is replicate-padded
    on the bottom/right to ``(hp, wp)`` so the grid covers it exactly, whatever its size. A model with
    a ``margin`` sees each tile with that many pixels around it (replicated past the image's edges)."""

    shape: tuple[int, int, int, int]
    patch: int
    stride: int
    margin: int = 0

    @classmethod
    def of(cls, image: torch.Tensor, patch: int, stride: int, margin: int = 0) -> "TileGrid":
        if not 1 <= stride <= patch:
            raise ValueError(f"stride must be in [1, patch size {patch}], got {stride}")
        return cls(tuple(image.shape), patch, stride, margin)

    @property
    def padded(self) -> tuple[int, int]:
        _, _, h, w = self.shape
        return _padded_size(h, self.patch, self.stride), _padded_size(w, self.patch, self.stride)

    @property
    def rows(self) -> int:
        return (self.padded[0] - self.patch) // self.stride + 1

    @property
    def cols(self) -> int:
        return (self.padded[1] - self.patch) // self.stride + 1

    @property
    def count(self) -> int:
        """Flattened tiles of the whole batch."""
        return self.shape[0] * self.rows * self.cols

    def pad(self, image: torch.Tensor) -> torch.Tensor:
        """The batch padded for :meth:`tiles`: to the grid on the bottom/right, and by the margin all round
        (the tile at padded corner (y, x) then starts at (y, x) of this, its margin included)."""
        hp, wp = self.padded
        h, w = self.shape[2:]
        m = self.margin
        right, bottom = wp - w + m, hp - h + m
        return F.pad(image, (m, right, m, bottom), mode="replicate") if (m, right, bottom) != (0, 0, 0) else image

    def positions(self, r0: int = 0, r1: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners (rows, columns in the padded image) of the tiles of tile rows ``r0:r1``, in
        the order :meth:`tiles` gives them (image, then row, then column)."""
        r1 = self.rows if r1 is None else r1
        ys = torch.arange(r0, r1).mul_(self.stride).repeat_interleave(self.cols)
        xs = torch.arange(self.cols).mul_(self.stride).repeat(r1 - r0)
        return ys.repeat(self.shape[0]), xs.repeat(self.shape[0])

    def tiles(self, band: torch.Tensor) -> torch.Tensor:
        """Flattened tiles with their margins ``(B*L, C*s*s)``, s = p + 2·margin, of a padded image
        (:meth:`pad`) or of its rows :meth:`band_rows`."""
        b, c = self.shape[:2]
        side = self.patch + 2 * self.margin
        t = F.unfold(band, side, stride=self.stride)  # (B, C*s*s, L)
        return t.transpose(1, 2).reshape(-1, c * side * side)

    def band_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Rows of the padded image (:meth:`pad`) that tile rows ``r0:r1`` see, margins included."""
        return r0 * self.stride, (r1 - 1) * self.stride + self.patch + 2 * self.margin

    def add(self, acc: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, y0: int, y1: int,
            window: torch.Tensor | None) -> None:
        """Blend a band's tile outputs ``(B*L, C*p*p)`` into the running sums ``acc``/``weight``
        over padded rows ``y0:y1``."""
        b, c = self.shape[:2]
        pp = self.patch * self.patch
        n = out.shape[0] // b
        out = out.reshape(b, n, c * pp).transpose(1, 2)
        ones = torch.ones((1, pp, n), dtype=acc.dtype, device=acc.device)
        if window is not None:
            win = window.to(acc.device, acc.dtype).reshape(1, 1, pp, 1)
            out = (out.reshape(b, c, pp, n) * win).reshape(b, c * pp, n)
            ones = ones * win.reshape(1, pp, 1)
        size = (y1 - y0, self.padded[1])
        acc[:, :, y0:y1, :] += F.fold(out.to(acc.dtype), size, self.patch, stride=self.stride)
        weight[:, :, y0:y1, :] += F.fold(ones, size, self.patch, stride=self.stride)

    def blend(self, out: torch.Tensor, like: torch.Tensor, window: torch.Tensor | None) -> torch.Tensor:
        """The whole batch's tile outputs ``(count, C*p*p)`` blended back to ``(B, C, H, W)``."""
        acc, weight = self.sums(like)
        self.add(acc, weight, out, 0, self.padded[0], window)
        return self.finish(acc, weight)

    def sums(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = self.shape[:2]
        hp, wp = self.padded
        return (torch.zeros((b, c, hp, wp), dtype=like.dtype, device=like.device),
                torch.zeros((1, 1, hp, wp), dtype=like.dtype, device=like.device))

    def finish(self, acc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h, w = self.shape[2:]
        return (acc / weight)[:, :, :h, :w]


def run_chunks(fn: PatchFn, flat: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` over ``flat`` in chunks of ``batch_size`` of its rows (tiles; bounds the activations' memory)."""
    return torch.cat([fn(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)])


def restore_tiles(fn: PatchFn, image: torch.Tensor, patch: int, stride: int,
                  batch_size: int = 4096, max_tiles: int = 8192, blend: Blend = Blend.FLAT,
                  positions: bool = False, margin: int = 0) -> torch.Tensor:
    """Run ``fn`` over overlapping tiles of ``image`` ``(B, C, H, W)`` and blend them back.

    The image is replicate-padded on the bottom/right so the tile grid covers it, so any size from
    1×1 works. Where tiles overlap their outputs are averaged, weighted by ``blend``'s window. With an
    identity ``fn`` the result is the input (up to float rounding). ``fn`` gets at most ``batch_size``
    tiles a call (tiles, not network rows: :func:`raeae.inference.restore_arrays` converts its
    ``--tile-batch`` rows for a model that runs a tile as several rows); with ``positions`` it is called
    as ``fn(tiles, ys, xs)`` with their top-left corners. At most ``max_tiles`` tiles are
    held at once: 8,192 colour tiles of 13×13 are 16.6 MB, below the 32 MB up to which a raeae
    worker's allocator reuses freed memory (:mod:`raeae.worker`), where bands of 65,536
    tiles (133 MB) were each a fresh ``mmap``, zeroed by the kernel page by page. A model with a
    ``margin`` gets each tile with that many pixels around it and returns the tile.
    """
    grid = TileGrid.of(image, patch, stride, margin)
    x = grid.pad(image)
    acc, weight = grid.sums(image)
    window = blend.window(patch)
    band_rows = max(1, max_tiles // max(1, grid.cols * grid.shape[0]))
    for r0 in range(0, grid.rows, band_rows):  # bands of tile rows, to bound memory on huge images
        r1 = min(grid.rows, r0 + band_rows)
        y0, y1 = r0 * stride, (r1 - 1) * stride + patch
        tiles = grid.tiles(x[:, :, slice(*grid.band_rows(r0, r1)), :])
        if positions:
            ys, xs = grid.positions(r0, r1)
            out = torch.cat([fn(tiles[i:i + batch_size], ys[i:i + batch_size], xs[i:i + batch_size])
                             for i in range(0, tiles.shape[0], batch_size)])
        else:
            out = run_chunks(fn, tiles, batch_size)
        grid.add(acc, weight, out, y0, y1, window)
    return grid.finish(acc, weight)
