"""The dense denoising autoencoder.

A patch of p×p×c pixels in [0, 1] is flattened to a vector, squeezed through Linear layers to a
latent vector and expanded back. Everything a checkpoint needs to rebuild the network lives in
:class:`ModelConfig`, so a checkpoint describes itself (as in nanoGPT).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from raeae.jpeg import JPEG_INPUTS


class Activation(enum.Enum):
    """Hidden-layer non-linearity."""

    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"
    SIGMOID = "sigmoid"

    def module(self) -> nn.Module:
        if self is Activation.RELU:
            return nn.ReLU()
        if self is Activation.GELU:
            return nn.GELU()
        if self is Activation.TANH:
            return nn.Tanh()
        return nn.Sigmoid()


class Head(enum.Enum):
    """What the last Linear layer's values pass through."""

    SIGMOID = "sigmoid"  # squashes to [0, 1]: a pixel intensity, and what BCE needs
    LINEAR = "linear"  # unbounded: needed in residual mode, where the head predicts signed noise


class ColorMode(enum.Enum):
    """How a 3-channel model sees a colour patch."""

    # One network over the whole p×p×3 vector. From scratch on 2 CPUs it stayed far below a gray
    # model applied per RGB channel (25.3 vs 27.9 dB on CBSD68 σ=25 after 25 minutes).
    JOINT = "joint"
    # RGB is turned into luma and two chroma planes by a fixed orthonormal colour transform (as CBM3D
    # does), and one shared network restores each p×p plane. The transform uses the correlation between
    # the channels: the luma plane carries 1/√3 of the noise, chroma planes are smooth. Measured with the
    # bundled gray network, before any colour training: +1.45 dB over per-channel RGB on CBSD68 σ=25.
    OPPONENT = "opponent"


# Rows: the planes (luma, red-blue, green-magenta) scaled so each stays in [0, 1] for RGB in [0, 1];
# up to the scaling this is an orthonormal basis, so white noise stays white in every plane.
OPPONENT_MATRIX = ((1 / 3, 1 / 3, 1 / 3), (1 / 2, 0.0, -1 / 2), (1 / 4, -1 / 2, 1 / 4))
OPPONENT_OFFSET = (0.0, 0.5, 0.5)
# The noise level fed to a noise_input network, in units of σ=25 on the 0-255 scale, so that it is of
# the same order as the centred pixels beside it.
LEVEL_UNIT = 25.0 / 255.0


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a :class:`DenseAutoencoder`. Defaults are the digits recipe's network; the photo recipe
    is :func:`photo_config`."""

    patch_size: int = field(default=28, metadata={"help": "side p of the square p×p patches the model sees "
                                                          "(28 = a whole MNIST digit)"})
    channels: int = field(default=1, metadata={"help": "colour channels per patch: 1 grayscale, 3 RGB "
                                                       "(a grayscale model restores colour images channel by channel)"})
    hidden: tuple[int, ...] = field(default=(1024,), metadata={
        "help": "encoder hidden widths before the latent, comma separated (1024: measured better than "
                "narrower on MNIST, bench/RESULTS.md)"})
    latent: int = field(default=128, metadata={"help": "width of the latent code (128: a whole digit's "
                                                        "code; the photo recipe uses 512)"})
    decoder_hidden: tuple[int, ...] = field(default=(1024,), metadata={
        "help": "decoder hidden widths after the latent, comma separated; empty = latent straight to "
                "the output layer, as in the original Keras example's network"})
    activation: Activation = field(default=Activation.RELU, metadata={"help": "hidden-layer activation"})
    head: Head = field(default=Head.SIGMOID, metadata={"help": "output head: sigmoid (pixels in [0,1]) "
                                                                     "or linear"})
    residual: bool = field(default=False, metadata={
        "help": "predict the noise and return input minus it (residual learning, as in DnCNN); "
                "forces a linear output head"})
    color: ColorMode = field(default=ColorMode.OPPONENT, metadata={
        "help": "3-channel models only: 'opponent' restores luma and two chroma planes with one shared "
                "network (the default: measured far better on 2 CPUs, bench/RESULTS.md), 'joint' feeds the "
                "whole p×p×3 patch to one network"})
    noise_input: bool = field(default=False, metadata={
        "help": "the network is also told the noise level σ of what it restores (one more input, as FFDNet's "
                "noise map): training gives it the σ it drew, restore estimates it per image. `raeae train` "
                "turns it on for blind Gaussian, shot-noise and JPEG training unless --no-noise-input "
                "(why: bench/RESULTS.md)"})

    jpeg_input: bool = field(default=False, metadata={
        "help": "the network is also told each tile's JPEG damage: the strength of the quantisation table and the "
                "tile's phase on the 8×8 block grid (raeae.jpeg.context; 9 more inputs, zero where there is no "
                "JPEG). Restore reads the strength from a JPEG's own tables, or finds it in a decoded copy, and "
                "lays tiles at stride 4 on the block grid"})

    margin: int = field(default=0, metadata={
        "help": "pixels of context on each side of a patch that the network sees but does not restore: it takes "
                "(p+2m)×(p+2m) pixels and returns the p×p inside, so pixels near a tile's edge are restored from "
                "what lies past it (as Burger et al.'s 39→17 MLP). 0: a tile restores itself. With --init from a "
                "model with less, the new inputs start at zero weight, so training starts from what it restores"})

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.latent < 1 or any(w < 1 for w in (*self.hidden, *self.decoder_hidden)):
            raise ValueError("layer widths must be >= 1")

    @property
    def features(self) -> int:
        """Values per flattened patch the model returns: p·p·c."""
        return self.patch_size * self.patch_size * self.channels

    @property
    def side(self) -> int:
        """Side of the square the model sees: the patch and its margin on each side, p + 2m."""
        return self.patch_size + 2 * self.margin

    @property
    def in_features(self) -> int:
        """Values per flattened patch the model takes: (p+2m)²·c (``features`` when there is no margin)."""
        return self.side * self.side * self.channels

    @property
    def planes(self) -> bool:
        """True when one network restores each colour plane on its own (``ColorMode.OPPONENT``)."""
        return self.channels == 3 and self.color is ColorMode.OPPONENT

    @property
    def rows_per_patch(self) -> int:
        """Rows the network runs per patch: three in opponent mode (one per plane), else one."""
        return 3 if self.planes else 1

    @property
    def net_features(self) -> int:
        """Width of the network's last layer: one plane in opponent mode, else ``features``."""
        return self.patch_size * self.patch_size if self.planes else self.features

    @property
    def net_in_features(self) -> int:
        """Pixels into the network's first layer: one plane with its margin in opponent mode, else ``in_features``."""
        return self.side * self.side if self.planes else self.in_features

    def to_dict(self) -> dict:
        """Plain types only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["decoder_hidden"] = list(self.decoder_hidden)
        d["activation"] = self.activation.value
        d["head"] = self.head.value
        d["color"] = self.color.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(
            patch_size=int(d["patch_size"]),
            channels=int(d["channels"]),
            hidden=tuple(int(w) for w in d["hidden"]),
            latent=int(d["latent"]),
            decoder_hidden=tuple(int(w) for w in d["decoder_hidden"]),
            activation=Activation(d["activation"]),
            head=Head(d["head"]),
            residual=bool(d["residual"]),
            # checkpoints from before colour modes were joint
            color=ColorMode(d.get("color", ColorMode.JOINT.value)),
            noise_input=bool(d.get("noise_input", False)),  # checkpoints from before it had none
            jpeg_input=bool(d.get("jpeg_input", False)),
            margin=int(d.get("margin", 0)),  # checkpoints from before margins had none
        )

    @property
    def extra_inputs(self) -> int:
        """Inputs besides the pixels: the noise level (noise_input) and the JPEG context (jpeg_input)."""
        return int(self.noise_input) + JPEG_INPUTS * int(self.jpeg_input)


def _mlp(widths: list[int], activation: Activation) -> list[nn.Module]:
    """Linear layers between consecutive widths, each followed by the activation."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(w_in, w_out), activation.module()]
    return layers


class OutputLinear(nn.Linear):
    """The network's last layer: an ``nn.Linear`` whose large inference passes multiply a weight padded
    with zero rows to a multiple of ``ALIGN`` outputs, then drop the padding.

    A p×p patch has p² outputs, 169 for the 13×13 photo models, and an odd output width is slow in
    fp32 GEMM (nanoGPT pads its vocabulary to a multiple of 64 for the same reason). Measured on this
    2-CPU AMD EPYC (AVX2, MKL), 4096 rows × 1024 inputs: 38.2 ms at 169 outputs, 26.8 ms at 176 with
    one thread (21.8 -> 15.6 ms with two). ``restore_arrays`` on 500 of the restore bench's mixed
    images, one thread, 6 interleaved pairs: gray model 5.16 -> 4.65 s (medians; its forward passes
    4.30 -> 3.76 s), colour model 4.55 -> 4.35 s. At 256 rows and below the two widths ran within
    ±15 % of each other either way, so small passes (one small image restored alone) keep the plain
    layer. The parameters, and so checkpoints and DDP, are exactly ``nn.Linear``'s; passes that
    record gradients (training) keep its plain path too (a training step at batch 256 measured no gain).
    Under bf16 autocast on an AVX512-BF16 CPU (oneDNN's GEMM) the two widths ran alike, 9.2-10.0 ms at
    4096 rows (fp32 there: 29.2 ms at 169, 19.7-21.1 ms at 176), so the padding costs nothing there."""

    ALIGN = 16  # 64 bytes of fp32: one cache line, a whole number of AVX2/AVX-512 registers
    MIN_ROWS = 1024  # the smallest pass that pads (the layer alone: 0.81x the time at 1024 rows, 0.70x at 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = -self.out_features % self.ALIGN
        if pad == 0 or x.shape[:-1].numel() < self.MIN_ROWS or torch.is_grad_enabled():
            return super().forward(x)
        weight, bias = F.pad(self.weight, (0, 0, 0, pad)), F.pad(self.bias, (0, pad))
        return F.linear(x, weight, bias)[..., :self.out_features]


def photo_config(channels: int = 1) -> ModelConfig:
    """The photograph recipe's network: 13×13 patches, one 1024-wide layer each side of a 512 latent,
    residual (the net predicts the noise). Measured best in 10 CPU minutes on BSD68 σ=25 (28.08 dB)
    against wider, deeper and 12×12/17×17 variants on 2 cores."""
    return ModelConfig(patch_size=13, channels=channels, hidden=(1024,), latent=512, decoder_hidden=(1024,),
                       residual=True)


def digits_config() -> ModelConfig:
    """The digits recipe's network: a whole 28×28 MNIST digit per patch, 1024-128-1024, sigmoid head
    (the ``ModelConfig`` defaults)."""
    return ModelConfig()


def seed_config(patch_size: int = 28) -> ModelConfig:
    """The seed's MNIST network: encoder 784->128->128, decoder 128->784, sigmoid output."""
    return ModelConfig(patch_size=patch_size, hidden=(128,), latent=128, decoder_hidden=())


class DenseAutoencoder(nn.Module):
    """Fully-connected denoising autoencoder on flattened patches.

    ``forward`` takes ``(N, features)`` values in [0, 1] and returns the same shape. In residual mode
    the network estimates the noise ``n(x)`` and returns ``x - n(x)``; the result is not clamped here
    (the loss sees the raw estimate), callers clamp to [0, 1] when they make pixels.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # The JPEG qualities a jpeg_input model learnt (its checkpoint's training damage; set on loading):
        # builtin:auto sends each JPEG to the model that learnt the narrowest range holding its quality.
        self.jpeg_qualities: tuple[int, int] = (1, 100)
        self.jpeg_noise = True  # whether it learnt JPEGs of noisy images too (a noise-free one gets none)
        n = config.net_features
        self.encoder = nn.Sequential(*_mlp([config.net_in_features + config.extra_inputs, *config.hidden, config.latent],
                                           config.activation))
        self.decoder = nn.Sequential(*_mlp([config.latent, *config.decoder_hidden], config.activation),
                                     OutputLinear(([config.latent, *config.decoder_hidden])[-1], n))
        # buffers, so they follow .to(device) and dtype; not persistent: fixed, not learnt
        m = torch.tensor(OPPONENT_MATRIX)
        self.register_buffer("to_planes", m, persistent=False)
        self.register_buffer("from_planes", torch.linalg.inv(m), persistent=False)
        self.register_buffer("plane_offset", torch.tensor(OPPONENT_OFFSET).reshape(1, 3, 1), persistent=False)
        # white RGB noise of std σ has std σ·|row| in each opponent plane
        self.register_buffer("plane_gain", m.norm(dim=1), persistent=False)

    @torch.no_grad()
    def init_output_bias(self, mean_patch: torch.Tensor) -> None:
        """Start from the data's mean patch instead of flat grey ("init well"): the untrained net then
        already outputs the mean, and the first hundreds of steps are not spent learning it. Measured on
        MNIST σ=76: +2.5 dB after 222 steps. Residual heads predict zero-mean noise and keep 0, and a
        network shared by colour planes has no single mean patch."""
        if self.config.residual or self.config.planes:
            return
        bias = self.decoder[-1].bias
        if mean_patch.shape[-1] == self.config.side:  # a patch with its margin: its inside is what is restored
            mean_patch = self.center(mean_patch.reshape(1, -1))
        m = mean_patch.reshape(-1).to(bias)
        bias.copy_(torch.logit(m.clamp(0.01, 0.99)) if self.sigmoid_head else m)

    @property
    def sigmoid_head(self) -> bool:
        """True when ``forward`` is the sigmoid of ``logits`` (so BCE can be taken on the logits)."""
        return self.config.head is Head.SIGMOID and not self.config.residual and not self.config.planes

    def logits(self, x: torch.Tensor, level: torch.Tensor | None = None, jpeg: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's raw values: pre-sigmoid intensities, or the noise estimate in residual mode.

        Pixels in [0, 1] are centred and scaled to about unit spread before the first layer (as Burger
        et al. normalise their patches). Measured: +0.34 dB on BSD68 σ=25 after 2 CPU minutes; -0.4 dB on
        2-epoch MNIST, whose near-binary inputs gain nothing from it. A ``noise_input`` network takes
        ``level``, each row's noise std in [0, 1] units (``(N,)``), as one more input; a ``jpeg_input``
        network takes ``jpeg``, each row's JPEG context ``(N, JPEG_INPUTS)`` (:func:`raeae.jpeg.context`;
        None: no JPEG damage, all zero)."""
        z = (x - 0.5) * 4.0
        if self.config.noise_input:
            z = torch.cat([z, self._level_column(level, x)], dim=1)
        if self.config.jpeg_input:
            j = x.new_zeros(x.shape[0], JPEG_INPUTS) if jpeg is None else jpeg.to(x.dtype)
            z = torch.cat([z, j], dim=1)
        return self.decoder(self.encoder(z))

    def _level_column(self, level: torch.Tensor | float | None, x: torch.Tensor) -> torch.Tensor:
        if level is None:
            raise ValueError("this model takes the noise level of its input (noise_input): pass level=")
        level = torch.as_tensor(level, dtype=x.dtype, device=x.device)
        return (level / LEVEL_UNIT).expand(x.shape[0]).reshape(-1, 1)

    def forward(self, x: torch.Tensor, logits: bool = False, level: torch.Tensor | float | None = None,
                jpeg: torch.Tensor | None = None) -> torch.Tensor:
        """Restored patches; with ``logits=True`` the last layer's raw values (for BCE on logits).
        ``level``: the input's noise std in [0, 1] units, per row or one for all; only a ``noise_input``
        model uses it. Going through ``forward`` keeps DDP's gradient hooks in play for both."""
        if self.config.planes:
            if logits:
                raise ValueError("an opponent-colour model has no pixel logits; train it with mse")
            return self._forward_planes(x, level, jpeg)
        return self._restore(x, self.logits(x, level, jpeg)) if not logits else self.logits(x, level, jpeg)

    def center(self, x: torch.Tensor) -> torch.Tensor:
        """The p×p patches inside flattened inputs with a margin, ``(N, C·(p+2m)²)`` -> ``(N, C·p²)``, C
        the channels the rows hold (1 for opponent-colour planes); ``x`` itself without a margin."""
        m, p, side = self.config.margin, self.config.patch_size, self.config.side
        if m == 0:
            return x
        return x.reshape(x.shape[0], -1, side, side)[:, :, m:m + p, m:m + p].reshape(x.shape[0], -1)

    def _restore(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The network's raw values ``z`` for input ``x`` as restored values."""
        if self.config.residual:
            return self.center(x) - z
        if self.config.head is Head.SIGMOID:
            return torch.sigmoid(z)
        return z

    def _forward_planes(self, x: torch.Tensor, level: torch.Tensor | float | None,
                        jpeg: torch.Tensor | None = None) -> torch.Tensor:
        """RGB patches -> luma/chroma planes -> the shared network on each plane -> RGB patches."""
        n, pp, seen = x.shape[0], self.config.patch_size ** 2, self.config.side ** 2
        exact = torch.autocast(x.device.type, enabled=False)  # the colour transform stays float32 under autocast
        with exact:
            planes = torch.einsum("pc,ncx->npx", self.to_planes, x.float().reshape(n, 3, seen)) + self.plane_offset
        flat = planes.reshape(n * 3, seen)
        if self.config.noise_input and level is not None:  # each plane's own noise std, rows n-major
            level = (torch.as_tensor(level, device=x.device).float().expand(n).reshape(n, 1) * self.plane_gain).reshape(-1)
        if jpeg is not None:  # every plane of a tile has the tile's JPEG context
            jpeg = jpeg.repeat_interleave(3, dim=0)
        out = self._restore(flat, self.logits(flat, level, jpeg))
        with exact:
            out = out.float().reshape(n, 3, pp) - self.plane_offset
            return torch.einsum("cp,npx->ncx", self.from_planes, out).reshape(n, 3 * pp)


def describe_network(m: ModelConfig) -> str:
    """The network in one line, as `raeae train` and `raeae info` print it:
    ``169+σ->[1024]->512->[1024]->169 on each of 3 opponent colour planes (1,398,441 parameters)``."""
    planes = " on each of 3 opponent colour planes" if m.planes else ""
    told = ("+σ" if m.noise_input else "") + (f"+{JPEG_INPUTS} JPEG" if m.jpeg_input else "")  # inputs besides pixels
    return (f"{m.net_in_features}{told}->{list(m.hidden)}->{m.latent}->{list(m.decoder_hidden)}->{m.net_features}"
            f"{planes} ({parameter_count(build_model(m)):,} parameters)")


def build_model(config: ModelConfig) -> DenseAutoencoder:
    """The one factory: a fresh, randomly initialised model for ``config``."""
    return DenseAutoencoder(config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
