"""Restore-time settings that configs name: tile blending, the forward passes' number format, the
default tile stride and how the restore pipeline's stages are laid out. They live apart from the torch
code that applies them so that a driver (the CLI, ``raeae restore``, ``raeae nightly``) builds its
configs without importing torch: the import costs ~1.5 s on the way to the first row, and only the
model actors need torch.
"""

from __future__ import annotations

import contextlib
import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def default_stride(patch: int) -> int:
    """Half-patch overlap: each pixel is averaged over ~4 tiles, which removes tile seams; a smaller
    stride averages more (slightly better PSNR) at quadratically more compute."""
    return max(1, patch // 2)


# Rows of the network per forward pass: the default of restore's --tile-batch (why 4096: its help in
# raeae.restoring.RestoreConfig) and of the torch code's batch_size, kept here so both name one number.
TILE_BATCH = 4096


class Blend(enum.Enum):
    """How overlapping tiles' outputs are averaged into one pixel."""

    FLAT = "flat"  # every tile counts the same
    GAUSSIAN = "gaussian"  # tiles count more near their centre, where the model saw the most context

    def window(self, patch: int) -> "torch.Tensor | None":
        """Per-pixel weights of one ``patch``×``patch`` tile (None: flat)."""
        import torch

        if self is Blend.FLAT:
            return None
        d = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2
        g = torch.exp(-(d ** 2) / (2 * (patch / 4) ** 2))
        return g[:, None] * g[None, :]


def fast_bf16(device: "torch.device") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: CPUs with AVX512-BF16 or AMX, and an
    accelerator whose torch backend says it supports bf16 (CUDA GPUs, XPUs). Elsewhere bf16 is emulated
    and slower than fp32. A capability query about the device it is given; it never picks a device."""
    import torch

    if device.type == "cpu":
        try:  # private helpers; an older or newer torch without them simply gets fp32
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:
            return False
    try:  # a device type without a torch backend module of its own (meta...) has no native bf16
        supported = getattr(torch.get_device_module(device), "is_bf16_supported", None)
    except RuntimeError:
        return False
    return bool(supported()) if supported is not None else False


class Precision(enum.Enum):
    """The number format of the model's matrix multiplies (tiling, blending and the residual
    subtraction stay float32)."""

    # bf16 where the hardware has it natively, else fp32. Measured on BSD68 σ=25 with builtin:gray
    # on an AVX512-BF16 CPU: -0.002 dB for 2.4x the speed.
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"

    def bf16_on(self, device: "torch.device") -> bool:
        """Whether this setting asks for bfloat16 on ``device``."""
        return self is Precision.BF16 or (self is Precision.AUTO and fast_bf16(device))

    def autocast(self, device: "torch.device"):
        """The context the forward passes run in."""
        import torch

        if self.bf16_on(device) and torch.amp.is_autocast_available(device.type):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Layout(enum.Enum):
    """Where the restore pipeline's three stages (decode, model, encode) run."""

    # fused on CPU-only clusters, staged with --gpu (measured: see raeae.restoring.plan_stages)
    AUTO = "auto"
    # decode and encode in CPU tasks, the model in actors: a GPU never waits for the CPU work
    STAGED = "staged"
    # all three in each model actor's call, one single-threaded actor per CPU: no stage takes a core
    # from another's matrix multiply
    FUSED = "fused"
