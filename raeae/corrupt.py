"""Corruptions applied on the fly to clean batches in [0, 1].

Every function takes a batch of any shape ``(N, ...)`` and a ``torch.Generator``, so results are
reproducible from a seed and each epoch draws fresh noise. All work is vectorised over the batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import torch


class Noise(enum.Enum):
    GAUSSIAN = "gaussian"  # sensor noise: additive white Gaussian, σ on the 0–255 scale
    SALT_PEPPER = "salt-pepper"  # dead/hot pixels: a fraction `amount` of pixels set to 0 or 1
    MASK = "mask"  # dropped pixels: a fraction `amount` of pixels zeroed
    BLOCK = "block"  # dropped regions: one zeroed square of side `block` per sample
    # JPEG compression at a quality drawn from [quality, quality_max], after Gaussian noise of σ in
    # [sigma, sigma_max] on a share `noise_share` of the images (a camera's or scanner's noise, then its
    # encoder): applied to whole images before patches are cut (raeae.damaged_patches), on the block grid
    JPEG = "jpeg"
    # shot noise: photon counts of a sensor whose white collects `peak` photons (Poisson), drawn per sample
    # from [peak, peak_max] when peak_max > peak; its std grows with the brightness, as a sensor's does
    POISSON = "poisson"


@dataclass(frozen=True)
class NoiseConfig:
    """Which corruption training learns to undo, and how strong it is."""

    noise: Noise = field(default=Noise.GAUSSIAN, metadata={"help": "corruption applied on the fly"})
    sigma: float = field(default=25.0, metadata={
        "help": "Gaussian σ on the 0–255 scale (25 is the standard benchmark level)"})
    sigma_max: float = field(default=0.0, metadata={
        "help": "if > sigma, draw σ uniformly from [sigma, sigma_max] per sample (blind denoising)"})
    amount: float = field(default=0.1, metadata={
        "help": "fraction of pixels hit, for salt-pepper and mask"})
    block: int = field(default=8, metadata={"help": "side of the zeroed square, for block masking"})
    clip: bool = field(default=True, metadata={
        "help": "clip noisy values to [0,1], as they are in any stored 8-bit image"})
    quality: int = field(default=10, metadata={
        "help": "for --noise jpeg: the lowest JPEG quality drawn (10: the heaviest compression archives hold)"})
    quality_max: int = field(default=95, metadata={
        "help": "for --noise jpeg: the highest JPEG quality drawn, uniformly per image and epoch (95: above it "
                "JPEG leaves next to nothing to undo)"})
    peak: float = field(default=30.0, metadata={
        "help": "for --noise poisson: photons that white collects (fewer = noisier; 30 is a dim scene)"})
    peak_max: float = field(default=0.0, metadata={
        "help": "for --noise poisson: if > peak, draw the peak uniformly from [peak, peak_max] per sample"})
    noise_share: float = field(default=0.5, metadata={
        "help": "for --noise jpeg: share of images given Gaussian noise of σ in [--sigma, --sigma-max] before "
                "compression (noise then JPEG, what cameras and scanners save); the rest are compressed clean"})

    def __post_init__(self) -> None:
        if self.sigma < 0 or self.sigma_max < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma} (max {self.sigma_max})")
        if not 0.0 <= self.amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {self.amount}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if not 1 <= self.quality <= self.quality_max <= 100:
            raise ValueError(f"JPEG qualities must satisfy 1 <= quality <= quality_max <= 100, got "
                             f"{self.quality} and {self.quality_max}")
        if self.peak <= 0 or self.peak_max < 0:
            raise ValueError(f"peak must be > 0 and peak_max >= 0, got {self.peak} and {self.peak_max}")
        if not 0.0 <= self.noise_share <= 1.0:
            raise ValueError(f"noise_share must be in [0, 1], got {self.noise_share}")

    @property
    def blind(self) -> bool:
        """Whether σ is drawn per sample from a range (blind denoising) rather than fixed."""
        return self.sigma_max > self.sigma

    def to_dict(self) -> dict:
        return {"noise": self.noise.value, "sigma": self.sigma, "sigma_max": self.sigma_max,
                "amount": self.amount, "block": self.block, "clip": self.clip, "quality": self.quality,
                "quality_max": self.quality_max, "noise_share": self.noise_share, "peak": self.peak,
                "peak_max": self.peak_max}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseConfig":
        return cls(noise=Noise(d["noise"]), sigma=float(d["sigma"]), sigma_max=float(d["sigma_max"]),
                   amount=float(d["amount"]), block=int(d["block"]), clip=bool(d["clip"]),
                   # checkpoints from before JPEG training have none of these
                   quality=int(d.get("quality", 10)), quality_max=int(d.get("quality_max", 95)),
                   noise_share=float(d.get("noise_share", 0.5)), peak=float(d.get("peak", 30.0)),
                   peak_max=float(d.get("peak_max", 0.0)))


# Random numbers are drawn on the generator's device and moved to the batch: a CPU generator cannot
# fill a CUDA tensor (training on a GPU draws on a CUDA generator, so nothing moves there).


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(N,)`` to broadcast over the remaining dimensions of ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def draw_sigmas(x: torch.Tensor, sigma: float, gen: torch.Generator, sigma_max: float = 0.0) -> torch.Tensor:
    """Each sample's Gaussian σ ``(N,)`` on the 0–255 scale: ``sigma``, or uniform in [σ, σ_max] if σ_max > σ."""
    if sigma_max > sigma:
        s = torch.rand(x.shape[0], generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
        return s * (sigma_max - sigma) + sigma
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


def gaussian(x: torch.Tensor, sigma: float, gen: torch.Generator, sigma_max: float = 0.0,
             sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """Additive white Gaussian noise; σ on the 0–255 scale, per-sample uniform in [σ, σ_max] if σ_max > σ,
    or each sample's own from ``sigmas`` (``draw_sigmas``) when given."""
    s = draw_sigmas(x, sigma, gen, sigma_max) if sigmas is None else sigmas
    noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    return x + noise * _per_sample(s / 255.0, x)


def poisson(x: torch.Tensor, peak: float, gen: torch.Generator, peak_max: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shot noise: ``Poisson(x * peak) / peak``, the peak per sample uniform in [peak, peak_max] when
    peak_max > peak. Returns the noisy batch and each sample's noise std in [0, 1] units ``(N,)`` (the
    rms over its pixels, sqrt(mean(x) / peak)), what a ``noise_input`` model is told."""
    peaks = draw_sigmas(x, peak, gen, peak_max)  # the same per-sample uniform draw
    scale = _per_sample(peaks, x)
    counts = torch.poisson((x * scale).float().cpu(), generator=gen if gen.device.type == "cpu" else None)
    level = (x.flatten(1).mean(1).clamp_min(0) / peaks).sqrt()
    return counts.to(x.device, x.dtype) / scale, level


def salt_pepper(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """A fraction ``amount`` of entries set to 0 or 1 with equal probability."""
    hit = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) < amount
    salt = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def pixel_mask(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """A fraction ``amount`` of entries zeroed (dropped pixels)."""
    keep = torch.rand(x.shape, generator=gen, device=gen.device).to(x.device) >= amount
    return x * keep.to(x.dtype)


def block_mask(x: torch.Tensor, block: int, gen: torch.Generator) -> torch.Tensor:
    """One zeroed ``block``×``block`` square per sample at a random place; ``x`` is ``(N, C, H, W)``."""
    n, _, h, w = x.shape
    b_h, b_w = min(block, h), min(block, w)
    top = torch.randint(0, h - b_h + 1, (n,), generator=gen, device=gen.device).to(x.device)
    left = torch.randint(0, w - b_w + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + b_h).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + b_w).view(n, 1, 1)))
    return x * (~inside).unsqueeze(1).to(x.dtype)


def corrupt(x: torch.Tensor, config: NoiseConfig, gen: torch.Generator) -> torch.Tensor:
    """Apply ``config``'s corruption to a clean batch ``(N, C, H, W)`` in [0, 1]."""
    return corrupt_with_level(x, config, gen)[0]


def corrupt_with_level(x: torch.Tensor, config: NoiseConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``corrupt``, and each sample's noise std in [0, 1] units ``(N,)`` (what a ``noise_input`` model is
    told): Gaussian and shot noise; None for the other corruptions, which have no σ."""
    level = None
    if config.noise is Noise.GAUSSIAN:
        sigmas = draw_sigmas(x, config.sigma, gen, config.sigma_max)
        y, level = gaussian(x, config.sigma, gen, sigmas=sigmas), sigmas / 255.0
    elif config.noise is Noise.SALT_PEPPER:
        y = salt_pepper(x, config.amount, gen)
    elif config.noise is Noise.MASK:
        y = pixel_mask(x, config.amount, gen)
    elif config.noise is Noise.POISSON:
        y, level = poisson(x, config.peak, gen, config.peak_max)
    elif config.noise is Noise.JPEG:
        raise ValueError("JPEG damage is made on whole images, on the block grid: raeae.damaged_patches")
    else:
        y = block_mask(x, config.block, gen)
    return (y.clamp(0.0, 1.0) if config.clip else y), level


# --- blind-spot masking, for learning from noisy images alone ---------------------------------------

def blind_spot(x: torch.Tensor, ratio: float, gen: torch.Generator, radius: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide a random ``ratio`` of the pixel positions of each patch ``(N, C, p, p)``: each hidden
    position takes the value of a random other pixel within ``radius`` (all channels from the same
    neighbour), as in Noise2Void. Returns the masked input and the mask ``(N, 1, p, p)`` (bool).

    The network cannot tell hidden pixels from the others, so it must estimate every pixel from its
    surroundings; pixel-independent noise cannot be estimated that way, the signal can. The loss is
    taken on the hidden pixels only (:func:`masked_mse`)."""
    n, _, h, w = x.shape
    mask = torch.rand((n, 1, h, w), generator=gen, device=gen.device).to(x.device) < ratio
    dy = torch.randint(-radius, radius + 1, (n, 1, h, w), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(-radius, radius + 1, (n, 1, h, w), generator=gen, device=gen.device).to(x.device)
    dx = torch.where((dy == 0) & (dx == 0), torch.ones_like(dx), dx)  # never the pixel itself
    rows = (torch.arange(h, device=x.device).view(1, 1, h, 1) + dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, 1, w) + dx).clamp(0, w - 1)
    # A clamped offset can land back on the pixel itself at the border: mirror it inward instead.
    rows = torch.where((rows == torch.arange(h, device=x.device).view(1, 1, h, 1)) & (cols == torch.arange(
        w, device=x.device).view(1, 1, 1, w)), (rows + 1) % h, rows)
    flat = (rows * w + cols).expand(-1, x.shape[1], -1, -1).reshape(n, x.shape[1], -1)
    neighbour = torch.gather(x.reshape(n, x.shape[1], -1), 2, flat).view_as(x)
    return torch.where(mask, neighbour, x), mask


def recorrupt(y: torch.Tensor, sigma: float, alpha: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Recorrupted-to-Recorrupted pairs (Pang et al., CVPR 2021) from noisy patches ``y`` whose noise
    is Gaussian of std ``sigma``: input ``y + alpha*z``, target ``y - z/alpha``, with ``z ~ N(0, sigma^2)``.

    The two noises, ``n + alpha*z`` and ``n - z/alpha``, have zero covariance, so for Gaussian ``n``
    they are independent: the expected MSE to the target is the MSE to the unknown clean image plus a
    constant, on every pixel (blind-spot masking trains on 1/8 of them). The network learns to
    denoise noise of std ``sigma * sqrt(1 + alpha^2)``."""
    z = torch.randn(y.shape, generator=gen, device=gen.device).to(y.device) * sigma
    return y + alpha * z, y - z / alpha


def _haar_blocks(image: "torch.Tensor | np.ndarray") -> tuple[np.ndarray, ...]:
    """The four pixels (top-left, top-right, bottom-left, bottom-right) of every 2×2 block of ``(C, H, W)``,
    as float32 numpy views (a torch tensor is read in place). The estimators below run in numpy: restore
    estimates σ for every image, and on a 64×64 colour image torch's per-operation cost made that ~0.6 ms,
    where numpy takes a fraction of it with the same values (the same float32 operations in the same
    order; the lower median, as torch's ``median``)."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    x = x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2].astype(np.float32, copy=False)
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


def _diagonal_detail(image: "torch.Tensor | np.ndarray") -> np.ndarray:
    """The finest diagonal Haar detail of ``(C, H, W)``: in photographs it is almost all noise (an
    i.i.d. noise of std s gives details of std s), as edges and texture are mostly coarser."""
    a, b, c, d = _haar_blocks(image)
    return (a - b - c + d) / 2


def _mad_sigma(details: np.ndarray) -> float:
    """Donoho's robust std of noise-only details: their median absolute value over 0.6745 (the lower
    median of an even count, as torch's ``median``)."""
    if details.size == 0:
        return 0.0
    k = (details.size - 1) // 2
    return float(np.partition(np.abs(details).ravel(), k)[k]) / 0.6745


def estimate_sigma(image: "torch.Tensor | np.ndarray") -> float:
    """The noise std of an image ``(C, H, W)`` in [0, 1], assuming pixel-independent noise: the median
    absolute diagonal Haar detail over 0.6745 (Donoho's MAD estimator); texture inflates it only a
    little. Noise clipped to 8 bits in dark or bright areas is weaker there, and reads so."""
    return _mad_sigma(_diagonal_detail(image))


def noise_level(image: "torch.Tensor | np.ndarray", rounds: int = 3, min_blocks: int = 64) -> float:
    """The Gaussian noise std of an image ``(C, H, W)`` in [0, 1] as it was before 8-bit clipping, for
    telling a ``noise_input`` model: :func:`estimate_sigma`'s MAD of the finest diagonal Haar details,
    taken only over 2×2 blocks that (1) hold no clipped pixel (0 or 1) and have a mean at least 2σ away
    from black and white, where clipping shrinks the noise, and (2) have horizontal and vertical
    details under 2σ, which leaves out edges and texture. For white noise the four Haar coefficients of
    a block are independent, so (2) does not bias the diagonal ones it keeps. Refined ``rounds`` times
    from the estimate over all unclipped blocks. Measured on BSD68 (68 images, noisy files clipped to 8
    bits), mean ± sd of the estimate: σ 15 -> 16.3 ± 1.3, 25 -> 26.2 ± 1.2, 50 -> 50.4 ± 1.2, where
    the plain MAD gives 16.1 ± 1.6, 24.9 ± 1.9, 45.6 ± 3.3."""
    a, b, c, d = _haar_blocks(image)
    if a.size == 0:
        return 0.0
    unclipped = (np.minimum(np.minimum(a, b), np.minimum(c, d)) > 0) & (np.maximum(np.maximum(a, b), np.maximum(c, d)) < 1)
    if np.count_nonzero(unclipped) < min_blocks:  # too few: the estimate over every block
        return estimate_sigma(image)
    a, b, c, d = a[unclipped], b[unclipped], c[unclipped], d[unclipped]  # the unclipped blocks only, from here on
    hh, mean = (a - b - c + d) / 2, (a + b + c + d) / 4
    edge = np.maximum(np.abs((a + b - c - d) / 2), np.abs((a - b + c - d) / 2))  # the larger of the other two details
    sigma = _mad_sigma(hh)
    for _ in range(rounds):
        keep = (mean > np.float32(2 * sigma)) & (mean < np.float32(1 - 2 * sigma)) & (edge < np.float32(2 * sigma))
        if np.count_nonzero(keep) < min_blocks:
            break
        sigma = _mad_sigma(hh[keep])
    return sigma


IMPULSE_SHARE = 0.02  # above it, noise is impulsive: measured on Train400 (median over 60 images)
# Gaussian σ 5-50 gives 0.0000-0.0040 and Poisson-like (peak 10-100) 0.0000-0.0002; salt-and-pepper
# of 1-20 % of pixels gives 0.10-0.42, and clean images 0.07.


def impulse_share(image: "torch.Tensor | np.ndarray") -> float:
    """The share of an image's diagonal details beyond 5 noise stds, with the std from their lower
    quartile, which holds while up to 3/4 of the details are hit by impulses. Near 0 for Gaussian-like
    noise, far above :data:`IMPULSE_SHARE` for salt-and-pepper and other impulse noise."""
    hh = np.abs(_diagonal_detail(image)).ravel()
    if hh.size == 0:
        return 0.0
    k = max(1, hh.size // 4) - 1
    quartile = float(np.partition(hh, k)[k])  # the lower quartile
    sigma = quartile / 0.3186  # |N(0,1)|'s lower quartile
    return np.count_nonzero(hh > np.float32(5 * sigma)) / hh.size if sigma > 0 else 1.0


def masked_mse(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden pixels only; ``out``/``target`` ``(N, C*p*p)``, ``mask``
    ``(N, 1, p, p)``."""
    n = out.shape[0]
    m = mask.expand(-1, out.shape[1] // mask[0].numel(), -1, -1).reshape(n, -1).to(out.dtype)
    return ((out - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)
