"""Image-quality metrics on uint8 images or [0, 1] tensors."""

from __future__ import annotations

import math

import numpy as np
import torch


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (peak 255)."""
    mse = np.mean((clean.astype(np.float64) - other.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ssim(clean: np.ndarray, other: np.ndarray) -> float:
    """Structural similarity (scikit-image, gaussian-weighted as in Wang et al. 2004)."""
    from skimage.metrics import structural_similarity

    channel_axis = 2 if clean.ndim == 3 else None
    return float(structural_similarity(clean, other, data_range=255, channel_axis=channel_axis,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def batch_psnr(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) of ``(N, ...)`` tensors in [0, 1], after 8-bit quantisation of ``other``
    as it would be stored."""
    q = other.clamp(0, 1).mul(255).round().div(255)
    mse = (clean - q).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)
