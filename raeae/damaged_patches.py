"""Training pairs for damage that is made on whole images: JPEG compression (after noise, or alone).

A JPEG encoder works on the whole image, on a fixed block grid, so its damage cannot be added to
random patches the way Gaussian noise is (:mod:`raeae.corrupt`). Each epoch, every training image is
flipped or rotated (before compression, so the grid stays where an encoder puts it), given Gaussian
noise on a share of images, compressed at a random quality and decoded; then patches are cut from the
clean and damaged copies at the same places, on tile positions of the block grid (multiples of
:data:`raeae.jpeg.PHASE_STEP`, as restore lays its tiles). Each patch carries what restore will tell
the network: the noise level as restore estimates it from the damaged image, and the JPEG context.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from raeae.corrupt import NoiseConfig
from raeae.inference import gray_level_factor, noise_level_of
from raeae.jpeg import PHASE_STEP, compress, context, ijg_scale
from raeae.patches import pad_to_patch

# Share of colour training images made gray before compression: gray JPEGs (scans, old photographs)
# have no chroma, and the colour model restores them through its luma plane alone.
GRAY_SHARE = 0.25
# Threads that damage an epoch's images: the epoch waits for them, so they may use every core.
DAMAGE_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class DamagedEpoch:
    """One epoch of training pairs: clean patches ``(N, C, p, p)`` and the damaged ones the model sees,
    with its margin ``(N, C, p+2m, p+2m)``, uint8; each patch's noise
    level as restore estimates it (``(N,)``, [0, 1] units) and its JPEG context ``(N, JPEG_INPUTS)``."""

    clean: torch.Tensor
    damaged: torch.Tensor
    level: torch.Tensor
    jpeg: torch.Tensor

    def __len__(self) -> int:
        return self.clean.shape[0]

    def __getitem__(self, rows: slice) -> "DamagedEpoch":
        return DamagedEpoch(self.clean[rows], self.damaged[rows], self.level[rows], self.jpeg[rows])


def _dihedral_image(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an H×W×C image."""
    out = np.rot90(image, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


class DamagedPatchSampler:
    """Draws aligned patch pairs from whole images damaged afresh every epoch (see the module docstring)."""

    def __init__(self, images: list[torch.Tensor], patch: int, noise: NoiseConfig, augment: bool = True,
                 patches_per_image: int = 0, min_patches: int = 0, margin: int = 0):
        if not images:
            raise ValueError("no training images")
        # uint8 H×W×C arrays, at least one patch with its margins (and one JPEG block) in each direction
        # the first patch corner on restore's tile grid (multiples of PHASE_STEP) with room for its margin
        self.first = -(-margin // PHASE_STEP) * PHASE_STEP
        self.images = [pad_to_patch(img, max(self.first + patch + margin, 16)).permute(1, 2, 0).numpy() for img in images]
        self.patch, self.noise, self.augment, self.margin = patch, noise, augment, margin
        self.patches_per_image = patches_per_image
        self.min_per_image = -(-min_patches // len(images))

    def per_image(self, image: np.ndarray) -> int:
        if self.patches_per_image > 0:
            return self.patches_per_image
        return max(1, self.min_per_image, (image.shape[0] // self.patch) * (image.shape[1] // self.patch))

    def __len__(self) -> int:
        return sum(self.per_image(img) for img in self.images)

    def mean_patch(self) -> torch.Tensor:
        """Mean clean patch ``(C, p, p)`` in [0, 1] (for ``init_output_bias``)."""
        return self.sample(torch.Generator().manual_seed(0)).clean.float().mean(0).div_(255.0)

    def _damage(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(clean, damaged, level, JPEG scale) of one image this epoch."""
        cfg = self.noise
        if self.augment:
            image = _dihedral_image(image, int(rng.integers(8)))
        gray = image.shape[2] == 3 and rng.random() < GRAY_SHARE
        plane = image[..., :1] if image.shape[2] == 1 else (
            np.round(image @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8) if gray else image)
        x = plane.astype(np.float32)
        if rng.random() < cfg.noise_share:
            sigma = rng.uniform(cfg.sigma, max(cfg.sigma, cfg.sigma_max))
            x = x + rng.standard_normal(x.shape, dtype=np.float32) * sigma
        noisy = np.clip(np.round(x), 0, 255).astype(np.uint8)
        quality = int(rng.integers(cfg.quality, cfg.quality_max + 1))
        damaged = compress(noisy[..., 0] if noisy.shape[2] == 1 else noisy, quality)
        damaged = damaged[..., None] if damaged.ndim == 2 else damaged
        batch = torch.from_numpy(np.ascontiguousarray(damaged)).permute(2, 0, 1).unsqueeze(1).float().div_(255.0)
        level = noise_level_of(batch) / 255.0
        if gray:  # a gray image restored by a colour model: gray replicated, told as restore tells it
            plane, damaged = np.repeat(plane, 3, axis=2), np.repeat(damaged, 3, axis=2)
            level *= gray_level_factor()
        return plane, damaged, level, ijg_scale(quality)

    def sample(self, gen: torch.Generator) -> DamagedEpoch:
        """One epoch of shuffled training pairs."""
        seeds = np.random.SeedSequence(int(torch.randint(0, 2**62, (1,), generator=gen))).spawn(len(self.images))
        rngs = [np.random.default_rng(s) for s in seeds]  # one per image: the same epoch in any thread order
        with ThreadPoolExecutor(DAMAGE_THREADS) as pool:  # Pillow's codec and numpy release the GIL
            done = list(pool.map(self._damage, self.images, rngs))
        p, m = self.patch, self.margin
        clean, damaged, levels, contexts = [], [], [], []
        for image, rng, (c, d, level, scale) in zip(self.images, rngs, done):
            k = self.per_image(image)
            h, w = c.shape[:2]
            # the patches' corners on restore's tile grid, each with its margin inside the image
            lo = self.first // PHASE_STEP
            ys = torch.from_numpy(rng.integers(lo, max(lo, (h - p - m) // PHASE_STEP) + 1, k) * PHASE_STEP)
            xs = torch.from_numpy(rng.integers(lo, max(lo, (w - p - m) // PHASE_STEP) + 1, k) * PHASE_STEP)
            for src, out, off, side in ((c, clean, 0, p), (d, damaged, m, p + 2 * m)):
                t = torch.from_numpy(src).permute(2, 0, 1)
                out.append(t.unfold(1, side, 1).unfold(2, side, 1)[:, ys - off, xs - off].permute(1, 0, 2, 3))
            levels.append(torch.full((k,), level))
            contexts.append(context(scale, ys, xs))
        order = torch.randperm(sum(len(x) for x in levels), generator=gen)
        return DamagedEpoch(torch.cat(clean)[order], torch.cat(damaged)[order], torch.cat(levels)[order].float(),
                            torch.cat(contexts)[order])
