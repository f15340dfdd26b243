"""Image-quality metrics on uint8 images or [0, 1] tensors, and a peak-memory sampler for the
benchmarks and resource tests."""

from __future__ import annotations

import math
import threading
from typing import Callable

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


class PeakMemory:
    """Samples, in a background thread, the summed PSS of every process on the machine (Ray's
    workers, raylet and object store included; PSS shares each shared page out among the processes
    that map it, so the sum counts it once) and optionally a second gauge such as the Ray object
    store's used bytes; keeps the peaks. Use as a context manager."""

    def __init__(self, every_s: float = 1.0, gauge: Callable[[], int | None] | None = None, pss: bool = True):
        self.peak_pss = self.peak_gauge = 0
        self.every, self.gauge, self.pss, self._stop = every_s, gauge, pss, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def total_pss() -> int:
        import psutil

        total = 0
        for p in psutil.process_iter():
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, AttributeError):  # gone, or not ours to read
                pass
        return total

    def _sample(self) -> None:
        if self.pss:  # ~50 ms of CPU with a local Ray running: keep every_s well above that
            self.peak_pss = max(self.peak_pss, self.total_pss())
        if self.gauge is not None:
            self.peak_gauge = max(self.peak_gauge, self.gauge() or 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
