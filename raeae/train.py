"""Training on Ray Train: data-parallel DDP over ``TorchTrainer`` workers (CPU locally, GPU on a cluster).

The loop in :func:`train_loop_per_worker` is a plain PyTorch loop cut into small named steps
(``_train_epoch``, ``_validate``, ``_save``) in the style of pytorch/examples' DDP ``Trainer``:

* each worker reads its own share of the clean images (:meth:`raeae.data.TrainingSource.train_share`)
  and draws fresh random patches and fresh noise every epoch (:class:`raeae.patches.PatchSampler`,
  :func:`raeae.corrupt.corrupt`);
* rank 0 restores the held-out images whole, through the same tiling as inference, and reports the
  validation PSNR of the noisy input and of the model every epoch, with a checkpoint;
* a re-run with the same ``storage_path`` and ``run_name`` resumes from the latest checkpoint
  (Ray Train V2 semantics); early stopping and the time budget are agreed on by all ranks.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import posixpath
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from raeae import checkpoint as ckpt
from raeae.cluster import alive_nodes, capacity, connect, require
from raeae.corrupt import (IMPULSE_SHARE, Noise, NoiseConfig, blind_spot, corrupt, corrupt_with_level,
                           estimate_sigma, impulse_share, masked_mse, recorrupt)
from raeae.damaged_patches import DamagedEpoch, DamagedPatchSampler
from raeae.data import find_idx, load_source, read_image
from raeae.inference import Precision, default_stride, noise_level_of
from raeae.jpeg import JPEG_INPUTS, PHASE_STEP, compress, context, ijg_scale
from raeae.metrics import batch_psnr
from raeae.model import ModelConfig, build_model, describe_network, digits_config, photo_config
from raeae.patches import Blend, PatchSampler, dihedral, restore_tiles
from raeae.runs import choose_run, write_record
from raeae.storage import StorageConfig, StorageError, list_images, resolve, write_bytes
from raeae.worker import prepare_worker


class Loss(enum.Enum):
    MSE = "mse"  # what PSNR measures; the usual choice for natural images
    BCE = "bce"  # cross-entropy on pixel intensities; the classic choice for MNIST-like digits


class Scheme(enum.Enum):
    """How ``--self-supervised`` learns from noisy images alone."""

    # Recorrupt unless the noise is impulsive (salt-and-pepper and the like), which the training images
    # tell (raeae.corrupt.impulse_share); decided once for all ranks.
    AUTO = "auto"

    # Recorrupted-to-Recorrupted (Pang et al. 2021): extra Gaussian noise makes an input/target pair
    # whose noises are independent, so the loss covers every pixel. Needs Gaussian-like noise of one
    # std (given, or estimated from the images).
    RECORRUPT = "recorrupt"
    # Noise2Void masking (Krull et al. 2019): any pixel-independent noise, whose model it need not
    # know; the loss covers the hidden pixels only.
    BLIND_SPOT = "blind-spot"


def budget_checks(epochs: int, max_minutes: float) -> list[tuple[bool, str]]:
    """(ok, message) checks on a training budget, for every config that carries one (train, archive)."""
    return [(epochs >= 0, f"epochs must be >= 0, got {epochs}"),
            (max_minutes >= 0, f"max_minutes must be >= 0, got {max_minutes}"),
            (epochs > 0 or max_minutes > 0,
             "give --epochs or --max-minutes (or both): with neither, training would never stop")]


def budget_text(epochs: int, max_minutes: float) -> str:
    """A training budget as the commands print it, e.g. ``"no epoch limit, 1.5 min"``."""
    return f"{epochs or 'no'} epoch limit, " + (f"{max_minutes:g} min" if max_minutes else "no time limit")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Model and noise are nested configs stored in checkpoints.

    The field defaults are the photograph recipe (:meth:`Preset.config`), the best measured on 2 CPUs;
    ``raeae train`` swaps in the digits recipe for IDX data (``--preset``)."""

    data: str = field(default="", metadata={"help": "clean training images: an MNIST IDX folder/file or a "
                                                    "folder/prefix of images (local, s3://, gs://...)"})
    output: str = field(default="", metadata={"help": "folder (local or s3://) that receives the best "
                                                      "checkpoint, for `raeae restore --model`"})
    model: ModelConfig = field(default_factory=photo_config)
    noise: NoiseConfig = NoiseConfig()
    storage: StorageConfig = StorageConfig()
    init: str = field(default="", metadata={
        "help": "start from this checkpoint's weights (fine-tuning; also builtin:gray); "
                "its model config replaces the model flags"})
    epochs: int = field(default=0, metadata={
        "help": "passes over the training patches; 0 = no epoch limit, train until --max-minutes is spent"})
    max_minutes: float = field(default=10.0, metadata={
        "help": "training time budget of the whole run, resumes included (0 = none; then --epochs ends "
                "it); with --epochs too, whichever comes first (10: the measured photo recipe)"})
    patience: int = field(default=0, metadata={
        "help": "stop after this many epochs without a better validation PSNR (0 = never: with a cosine "
                "schedule the last epochs are the best ones)"})
    batch_size: int = field(default=256, metadata={
        "help": "patches per optimizer step over all workers (each of N workers takes 1/N), so results "
                "do not depend on the worker count (seed: 256)"})
    lr: float = field(default=3e-4, metadata={
        "help": "Adam learning rate (photos: 3e-4 with cosine decay, +0.6 dB over 1e-3 on BSD68 in 10 min)"})
    loss: Loss = field(default=Loss.MSE, metadata={"help": "reconstruction loss"})
    sigma_balance: float = field(default=0.0, metadata={
        "help": "blind training (--sigma-max): weigh each patch's squared error by (25/σ)^this, σ that patch's "
                "own noise level (at least 5). A denoiser's error grows about linearly with σ, so plain MSE (0) "
                "is ruled by the noisiest patches. Measured, 10 min blind σ 0-55 on Train400 -> BSD68 σ 15/25/50: "
                "0 30.14/27.87/24.86, 0.5 30.20/27.87/24.81, 1 30.23/27.84/24.74 dB: it moves PSNR from high σ "
                "to low σ, it does not add any, so the default is 0"})
    cosine: bool = field(default=True, metadata={
        "help": "cosine-decay the learning rate to 0 over the run (epochs, or the time budget if that "
                "ends first)"})
    workers: int = field(default=1, metadata={
        "help": "Ray Train workers (data-parallel DDP ranks); on one machine 1 worker with every CPU is "
                "fastest (measured: 2 workers on 2 CPUs run at 0.67x)"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per worker (on a GPU cluster)"})
    cpus_per_worker: float = field(default=0.0, metadata={
        "help": "CPUs reserved per worker, and torch's threads; 0 = the largest node's CPUs shared by "
                "the workers, so one worker uses the whole machine"})
    patches_per_image: int = field(default=0, metadata={
        "help": "random patches per image per epoch (0 = about one non-overlapping cover of each image)"})
    precision: Precision = field(default=Precision.AUTO, metadata={
        "help": "number format of the forward/backward matrix multiplies: auto = bf16 where the hardware has "
                "it natively (GPUs, CPUs with AVX512-BF16/AMX), else fp32; weights and Adam stay fp32. "
                "Measured: 10 CPU minutes on Train400 gave 166 epochs and 28.25 dB on BSD68 in bf16, 100 "
                "epochs and 28.08 dB in fp32"})
    augment: bool = field(default=True, metadata={
        "help": "random flips and 90° rotations of patches: helps on photographs, hurts on oriented "
                "content such as digits (measured: -2.9 dB after 2 MNIST epochs)"})
    self_supervised: bool = field(default=False, metadata={
        "help": "learn from noisy images alone (--data is the damaged archive; no noise is added), with "
                "--scheme"})
    scheme: Scheme = field(default=Scheme.AUTO, metadata={
        "help": "with --self-supervised: recorrupt = Recorrupted-to-Recorrupted pairs, loss on every pixel, "
                "for Gaussian-like noise (σ from --noise-sigma or estimated); blind-spot = Noise2Void "
                "masking, loss on hidden pixels, for any pixel-independent noise (salt-and-pepper too); "
                "auto = recorrupt unless the images' noise is impulsive. Measured, 10 min on noisy "
                "Train400 σ=25 -> BSD68: 27.34 dB with recorrupt, 25.75 with blind-spot (TV: 27.04)"})
    noise_sigma: float = field(default=0.0, metadata={
        "help": "with --scheme recorrupt: the archive's noise std on the 0-255 scale; 0 = estimate it "
                "(median over the training images of Donoho's MAD estimate; 25.2 on Train400 at σ=25)"})
    recorrupt_alpha: float = field(default=0.3, metadata={
        "help": "with --scheme recorrupt: the extra noise is alpha*z on the input and -z/alpha on the "
                "target; smaller alpha keeps training inputs closer to the archive's noise level (the "
                "model learns noise of σ*sqrt(1+alpha^2)), larger alpha makes targets less noisy. "
                "Measured, 10 min on noisy Train400 σ=25 -> BSD68: 0.3 27.29 dB, 0.5 27.25"})
    mask_ratio: float = field(default=0.125, metadata={
        "help": "with --self-supervised: share of each patch's pixels hidden and predicted (measured "
                "on Train400->BSD68 σ=25 after 1,500 steps: 1/16 +4.21 dB, 1/8 +4.62, 1/4 and 1/2 no better)"})
    val_clean: str = field(default="", metadata={
        "help": "with --self-supervised: clean copies of the images (same file names), to report a "
                "validation PSNR; without it validation reports the self-supervised loss"})
    max_images: int = field(default=0, metadata={
        "help": "train on a random sample of at most this many files of --data (0 = all)"})
    stride: int = field(default=0, metadata={
        "help": "tile stride for whole-image validation, recorded as restore's default (0 = patch/2)"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of images held out for validation"})
    seed: int = field(default=0, metadata={"help": "seed for the split, patches, noise and init"})
    run_name: str = field(default="", metadata={
        "help": "Ray Train run name; naming an existing run resumes it (default: a new run every time)"})
    resume: bool = field(default=False, metadata={
        "help": "resume the latest run under --storage-path (or --run-name); refused if its settings differ"})
    storage_path: str = field(default="runs/ray", metadata={
        "help": "where Ray Train keeps checkpoints (local or s3://; on a multi-node cluster use shared "
                "or object storage)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "most recent checkpoints kept; each also "
                                                               "carries the best weights so far"})
    failures: int = field(default=2, metadata={"help": "worker failures survived by restarting from the "
                                                       "last checkpoint"})

    def __post_init__(self) -> None:
        checks = [*budget_checks(self.epochs, self.max_minutes),
                  (self.batch_size >= self.workers,
                   f"batch_size ({self.batch_size}) must be >= workers ({self.workers}): it is split across them"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
                  (self.cpus_per_worker >= 0, f"cpus_per_worker must be >= 0, got {self.cpus_per_worker}"),
                  (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
                  (0 < self.mask_ratio < 1, f"mask_ratio must be in (0, 1), got {self.mask_ratio}"),
                  (self.noise_sigma >= 0, f"noise_sigma must be >= 0, got {self.noise_sigma}"),
                  (self.recorrupt_alpha > 0, f"recorrupt_alpha must be > 0, got {self.recorrupt_alpha}"),
                  (self.max_images >= 0, f"max_images must be >= 0, got {self.max_images}"),
                  (not self.val_clean or self.self_supervised, "--val-clean needs --self-supervised"),
                  (self.sigma_balance >= 0, f"sigma_balance must be >= 0, got {self.sigma_balance}"),
                  (not self.sigma_balance or (self.noise.blind and self.loss is Loss.MSE
                                              and not self.self_supervised),
                   "--sigma-balance weighs a blind range of Gaussian noise: it needs --sigma-max and mse"),
                  (not (self.self_supervised and self.loss is Loss.BCE), "--self-supervised trains with mse"),
                  (not self.model.noise_input or self.knows_noise_level,
                   "--noise-input tells the network the noise level: it needs --noise gaussian, poisson or jpeg and no "
                   "--self-supervised"),
                  (0 <= self.stride <= self.model.patch_size,
                   f"stride must be in [0, patch size {self.model.patch_size}], got {self.stride}"),
                  (not (self.loss is Loss.BCE and self.model.residual),
                   "loss bce needs a sigmoid output in [0,1]; residual outputs are unbounded - use mse")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def knows_noise_level(self) -> bool:
        """Whether training knows each patch's σ, which a ``noise_input`` model is told: supervised
        training on Gaussian noise it adds itself."""
        return self.noise.noise in (Noise.GAUSSIAN, Noise.POISSON, Noise.JPEG) and not self.self_supervised

    @property
    def val_stride(self) -> int:
        return self.stride or default_stride(self.model.patch_size)

    @property
    def budget_s(self) -> float:
        return self.max_minutes * 60 if self.max_minutes > 0 else math.inf

    def to_dict(self) -> dict:
        return {"data": self.data, "output": self.output, "model": self.model.to_dict(),
                "noise": self.noise.to_dict(), "storage": self.storage.to_dict(), "init": self.init,
                "epochs": self.epochs, "max_minutes": self.max_minutes, "patience": self.patience,
                "batch_size": self.batch_size, "lr": self.lr, "cosine": self.cosine, "loss": self.loss.value,
                "sigma_balance": self.sigma_balance,
                "workers": self.workers, "gpu": self.gpu, "cpus_per_worker": self.cpus_per_worker,
                "patches_per_image": self.patches_per_image, "augment": self.augment, "stride": self.stride,
                "precision": self.precision.value,
                "self_supervised": self.self_supervised, "scheme": self.scheme.value,
                "noise_sigma": self.noise_sigma, "recorrupt_alpha": self.recorrupt_alpha,
                "mask_ratio": self.mask_ratio,
                "val_clean": self.val_clean, "max_images": self.max_images,
                "val_fraction": self.val_fraction, "seed": self.seed, "run_name": self.run_name}


class Preset(enum.Enum):
    """A recipe of defaults for a kind of data; explicit flags override any field of it."""

    AUTO = "auto"  # digits for MNIST IDX data, archive with --self-supervised, photo for anything else
    PHOTO = "photo"  # natural photographs: the field defaults of TrainConfig
    DIGITS = "digits"  # MNIST-like digits: a whole-digit patch, no augmentation, a fixed epoch count
    ARCHIVE = "archive"  # noisy photographs alone: self-supervised, larger batches

    def config(self) -> TrainConfig:
        if self is Preset.DIGITS:
            # Tuned on MNIST σ=76: lr 3e-3 gives +1 dB over 1e-3 in 2 epochs on these shallow nets;
            # 10 epochs converge to within ~0.5 dB; flips/rotations hurt oriented digits (-2.9 dB).
            return TrainConfig(model=digits_config(), epochs=10, max_minutes=0.0, patience=5, lr=3e-3,
                               cosine=False, augment=False)
        if self is Preset.ARCHIVE:
            # Self-supervised targets are noisy (recorrupt's carry noise of σ/alpha), so steps are
            # noisy too: 1024-patch batches average more of it, and run at ~1.5x the samples/s of 256
            # on 2 CPUs. Measured, 10 min on noisy Train400 σ=25 -> BSD68: 1024 at lr 6e-4 27.34 dB,
            # 256 at 3e-4 27.29. (Supervised training goes the other way: 28.03 against 28.25.)
            return TrainConfig(self_supervised=True, batch_size=1024, lr=6e-4)
        return TrainConfig()


def detect_preset(data: str, storage: StorageConfig = StorageConfig()) -> Preset:
    """The recipe for ``data``: digits for an MNIST IDX folder or file, photo otherwise."""
    try:
        is_idx = bool(data) and find_idx(data, "train", storage) is not None
    except StorageError:
        is_idx = False  # unreadable data: the config is checked first, then loading says what is wrong
    return Preset.DIGITS if is_idx else Preset.PHOTO


# --- the worker loop, in small steps ----------------------------------------------------------------

def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device() -> torch.device:
    """Where a tensor must live for this process group's collectives: NCCL (GPU workers) reduces only
    accelerator tensors, gloo (CPU workers) only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def _all_reduce(value: float, op) -> float:
    if _world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=op)
    return float(t.item())


def _tensors(images: list[np.ndarray]) -> list[torch.Tensor]:
    """uint8 H×W×C arrays -> uint8 ``(C, H, W)`` tensors (views of writable copies)."""
    return [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in images]


def sigma_weights(noisy: torch.Tensor, clean: torch.Tensor, power: float) -> torch.Tensor:
    """Per-patch loss weights ``(25/σ)^power`` from each flattened patch's own noise level σ (0-255, at
    least 5), scaled to mean 1 so the learning rate keeps its meaning."""
    level = (noisy - clean).float().pow(2).mean(1).sqrt().mul(255.0).clamp(min=5.0)
    w = (25.0 / level).pow(power)
    return w / w.mean()


def _loss(model, noisy: torch.Tensor, clean: torch.Tensor, loss: Loss, weights: torch.Tensor | None = None,
          level: torch.Tensor | None = None, jpeg: torch.Tensor | None = None) -> torch.Tensor:
    module = model.module if hasattr(model, "module") else model
    if loss is Loss.BCE and module.sigmoid_head:
        # On the logits: numerically stable, and the gradient does not vanish at saturated pixels.
        return F.binary_cross_entropy_with_logits(model(noisy, logits=True, level=level, jpeg=jpeg), clean)
    out = model(noisy, level=level, jpeg=jpeg)
    if loss is Loss.BCE:
        return F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), clean)
    if weights is not None:
        return ((out - clean).pow(2).mean(1) * weights).mean()
    return F.mse_loss(out, clean)


MIN_STEPS_PER_EPOCH = 100  # below this, per-epoch validation and checkpointing eat a small dataset's time


def self_supervised_loss(model, noisy: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The loss of one batch of noisy patches ``(N, C, p, p)`` under ``cfg.scheme``; its expectation
    is the error to the unknown clean patches plus a constant."""
    if cfg.scheme is Scheme.RECORRUPT:  # (AUTO is decided before training: resolve_self_supervision)
        inputs, targets = recorrupt(noisy, cfg.noise_sigma / 255.0, cfg.recorrupt_alpha, gen)
        return F.mse_loss(model(inputs.flatten(1)), targets.flatten(1))
    # Hide some pixels, predict them from their surroundings.
    masked, mask = blind_spot(noisy, cfg.mask_ratio, gen)
    return masked_mse(model(masked.flatten(1)), noisy.flatten(1), mask)


NOISE_SAMPLE = 256  # images per rank for the noise statistics: their medians settle long before that


def resolve_self_supervision(cfg: TrainConfig, images: list[torch.Tensor]) -> TrainConfig:
    """``cfg`` with ``--scheme auto`` decided and, for recorrupt, the noise σ filled in: the medians of
    per-image statistics, averaged over the ranks, so every rank makes the same decision and uses
    the same σ (ranks that trained different losses would average nonsense, or wait forever)."""
    if not cfg.self_supervised or cfg.scheme is Scheme.BLIND_SPOT:
        return cfg
    sample = images[:NOISE_SAMPLE]  # converted to float one image at a time: large photos add up
    world = _world()[1]
    if cfg.scheme is Scheme.AUTO:
        share = _all_reduce(float(np.median([impulse_share(x.float() / 255.0) for x in sample])) if sample else 0.0,
                            dist.ReduceOp.SUM) / world
        cfg = replace(cfg, scheme=Scheme.BLIND_SPOT if share > IMPULSE_SHARE else Scheme.RECORRUPT)
    if cfg.scheme is Scheme.BLIND_SPOT or cfg.noise_sigma > 0:
        return cfg
    sigma = _all_reduce(float(np.median([estimate_sigma(x.float() / 255.0) for x in sample])) if sample else 0.0,
                        dist.ReduceOp.SUM) / world
    if sigma <= 0:
        raise ValueError("--scheme recorrupt: no noise found in the training images (estimated σ = 0); "
                         "give --noise-sigma, or use --scheme blind-spot")
    return replace(cfg, noise_sigma=sigma * 255.0)


def make_sampler(images: list[torch.Tensor], cfg: TrainConfig, world: int = 1) -> PatchSampler | DamagedPatchSampler:
    """This worker's patch sampler: ``--patches-per-image``, or about one cover of each image per epoch
    and at least :data:`MIN_STEPS_PER_EPOCH` batches (measured: a 120-image archive of 48 px crops made
    4-step epochs, and 0.4 minutes of training went almost all to validation and checkpoints). JPEG
    damage is made on whole images, so it has a sampler of its own."""
    min_patches = 0 if cfg.patches_per_image else MIN_STEPS_PER_EPOCH * max(1, cfg.batch_size // world)
    if cfg.noise.noise is Noise.JPEG and not cfg.self_supervised:
        return DamagedPatchSampler(images, cfg.model.patch_size, cfg.noise, cfg.augment, cfg.patches_per_image,
                                   min_patches)
    return PatchSampler(images, cfg.model.patch_size, cfg.patches_per_image, min_patches)


class EpochTrainer:
    """One worker's training state, with the loop cut into small named steps."""

    def __init__(self, cfg: TrainConfig, model, optimizer, sampler: PatchSampler, device: torch.device):
        self.cfg, self.model, self.optimizer, self.sampler, self.device = cfg, model, optimizer, sampler, device
        rank, world = _world()
        self.rank, self.world = rank, world
        # Same number of steps on every rank, or DDP's all-reduce waits forever on the longest one.
        self.batch = max(1, cfg.batch_size // world)
        self.steps = max(1, int(_all_reduce(len(sampler), dist.ReduceOp.MIN)) // self.batch)

    def _batch(self, patches: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Noisy and clean flattened patches, and each patch's Gaussian σ in [0, 1] units (None for
        other corruptions)."""
        clean = patches.to(self.device, non_blocking=True).float().div_(255.0)
        if self.cfg.augment:
            clean = dihedral(clean, gen)
        noisy, level = corrupt_with_level(clean, self.cfg.noise, gen)
        return noisy.flatten(1), clean.flatten(1), level

    def _step_loss(self, patches: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        with self.cfg.precision.autocast(self.device):
            return self._step_loss_in(patches, gen).float()

    def _step_loss_in(self, patches: torch.Tensor | DamagedEpoch, gen: torch.Generator) -> torch.Tensor:
        if isinstance(patches, DamagedEpoch):  # damaged whole images, already flipped (DamagedPatchSampler)
            clean = patches.clean.to(self.device, non_blocking=True).float().div_(255.0).flatten(1)
            noisy = patches.damaged.to(self.device, non_blocking=True).float().div_(255.0).flatten(1)
            return _loss(self.model, noisy, clean, self.cfg.loss, None, patches.level.to(self.device),
                         patches.jpeg.to(self.device))
        if not self.cfg.self_supervised:
            noisy, clean, level = self._batch(patches, gen)
            weights = sigma_weights(noisy, clean, self.cfg.sigma_balance) if self.cfg.sigma_balance else None
            return _loss(self.model, noisy, clean, self.cfg.loss, weights, level)
        noisy = patches.to(self.device, non_blocking=True).float().div_(255.0)  # already noisy
        if self.cfg.augment:
            noisy = dihedral(noisy, gen)
        return self_supervised_loss(self.model, noisy, self.cfg, gen)

    def _set_lr(self, epoch: int, step: int, time_frac: float) -> None:
        """Cosine decay to 0 over the run: by epochs, or by the time budget if that ends first.
        ``time_frac`` is agreed by all ranks (all-reduced), so every rank steps with the same lr."""
        if not self.cfg.cosine:
            return
        epoch_frac = ((epoch - 1) + step / self.steps) / self.cfg.epochs if self.cfg.epochs else 0.0
        frac = min(1.0, max(epoch_frac, time_frac))
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    def run_epoch(self, epoch: int, clock: "Clock") -> dict:
        seed = self.cfg.seed * 1_000_003 + epoch * 1009 + self.rank
        gen = torch.Generator().manual_seed(seed)
        patches = self.sampler.sample(gen)
        # Noise, masks and flips are drawn where the batch lives: on a GPU from a CUDA generator, so
        # no random numbers cross the bus (a CPU generator cannot fill a CUDA tensor by itself).
        draw = gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(seed)
        self.model.train()
        total, steps, t0 = 0.0, 0, time.perf_counter()
        time_frac = clock.fraction_used()
        for step in range(self.steps):
            self._set_lr(epoch, step, time_frac)
            loss = self._step_loss(patches[step * self.batch:(step + 1) * self.batch], draw)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            steps += 1
            if step % 25 == 24 and clock.limited:
                # One collective look at the clock: every rank leaves at the same step.
                left = _all_reduce(clock.left(), dist.ReduceOp.MIN)
                if left <= 0:
                    break
                time_frac = 1.0 - left / clock.budget_s
        seconds = time.perf_counter() - t0
        return {"train_loss": total / max(1, steps), "steps": steps, "epoch_s": seconds,
                "samples_per_s": steps * self.batch * self.world / max(seconds, 1e-9)}


class Clock:
    """The run's time budget, counted over all its attempts: a resumed run goes on with what is left
    (``spent_s`` of wall time before this attempt, from the checkpoint), not a fresh budget."""

    def __init__(self, budget_s: float, spent_s: float = 0.0):
        self.budget_s, self.spent_s, self.started = budget_s, spent_s, time.time()

    @property
    def limited(self) -> bool:
        return math.isfinite(self.budget_s)

    def elapsed(self) -> float:
        return self.spent_s + time.time() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def fraction_used(self) -> float:
        return min(1.0, self.elapsed() / self.budget_s) if self.limited else 0.0


STOP_REASONS = ("time budget", "patience", "epochs")


def decide_stop(cfg: TrainConfig, progress: dict, clock: Clock) -> str:
    """Whether to stop after this epoch, and why: ONE collective decision, taken at the same point on
    every rank. Each rank contributes what it knows (its own clock; rank 0 alone validates and knows
    the patience count), and one all-reduce (max) of the flags gives every rank the same answer.
    Deciding on each rank's own clock hung 2-worker runs: rank 0, later after validating, stopped
    while rank 1 went on into the next epoch's all-reduce and waited forever."""
    rank = _world()[0]
    flags = torch.tensor([float(clock.limited and clock.left() <= 0),
                          float(rank == 0 and cfg.patience > 0
                                and progress["epoch"] - progress["best_epoch"] >= cfg.patience),
                          float(cfg.epochs > 0 and progress["epoch"] >= cfg.epochs)], dtype=torch.float64)
    if _world()[1] > 1:
        flags = flags.to(_collective_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return next((why for why, flag in zip(STOP_REASONS, flags.tolist()) if flag > 0), "")


@torch.inference_mode()
def validate(model, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device) -> dict:
    """PSNR (dB) of the noisy held-out images and of the model's whole-image restorations.

    The noise is drawn from a fixed seed, so every epoch is compared on the same noisy images.
    Images of equal size are restored together in one batch.
    """
    module = model.module if hasattr(model, "module") else model
    if cfg.noise.noise is Noise.JPEG:
        return validate_jpeg(module, val, cfg, device)
    module.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    noise = cfg.noise
    if noise.blind:
        # Blind training: validate at the middle of the range. Random σ per image let a few nearly
        # clean images (σ≈0, 40+ dB) dominate the mean, which then fell while the model improved
        # (measured on the colour model: 26.48 -> 26.21 dB over 10 epochs as the train loss fell 14 %).
        noise = replace(noise, sigma=(noise.sigma + noise.sigma_max) / 2, sigma_max=0.0)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for img in val:
        groups.setdefault(tuple(img.shape), []).append(img)
    noisy_psnr, model_psnr = [], []
    for imgs in groups.values():
        clean = torch.stack(imgs).to(device).float().div_(255.0)
        noisy = corrupt(clean, noise, gen).clamp(0, 1).mul(255).round().div(255)
        # Gaussian: the true σ (validation ranks epochs, it does not test the estimator); shot noise has
        # no one σ: the images' estimate, as restore tells it
        level = noise.sigma / 255.0 if noise.noise is Noise.GAUSSIAN else noise_level_of(noisy) / 255.0
        restored = restore_tiles(lambda x: module(x, level=level).clamp(0, 1), noisy, cfg.model.patch_size,
                                 cfg.val_stride, blend=Blend.GAUSSIAN)
        noisy_psnr.append(batch_psnr(clean, noisy))
        model_psnr.append(batch_psnr(clean, restored))
    module.train()
    return {"val_psnr_noisy": float(torch.cat(noisy_psnr).mean()), "val_psnr": float(torch.cat(model_psnr).mean())}


@torch.inference_mode()
def validate_jpeg(module, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device) -> dict:
    """PSNR (dB) of the held-out images compressed at the middle of the quality range (no noise) and of
    the model's restorations, tiled as restore tiles them: stride 4 on the block grid, each image's
    noise level estimated as restore estimates it."""
    module.eval()
    quality = (cfg.noise.quality + cfg.noise.quality_max) // 2
    noisy_psnr, model_psnr = [], []
    for img in val:
        clean = img.to(device).float().div_(255.0).unsqueeze(0)
        pixels = img.permute(1, 2, 0).numpy()
        damaged = compress(pixels[..., 0] if pixels.shape[2] == 1 else pixels, quality)
        noisy = torch.from_numpy(damaged.reshape(pixels.shape)).permute(2, 0, 1).float().div_(255.0).unsqueeze(0).to(device)
        level = noise_level_of(noisy) / 255.0
        restored = restore_tiles(lambda x, ys, xs: module(x, level=level, jpeg=context(ijg_scale(quality), ys, xs).to(device))
                                 .clamp(0, 1), noisy, cfg.model.patch_size, PHASE_STEP, blend=Blend.GAUSSIAN,
                                 positions=True)
        noisy_psnr.append(batch_psnr(clean, noisy))
        model_psnr.append(batch_psnr(clean, restored))
    module.train()
    return {"val_psnr_noisy": float(torch.cat(noisy_psnr).mean()), "val_psnr": float(torch.cat(model_psnr).mean())}


@torch.inference_mode()
def validate_self_supervised(model, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device,
                             clean: list[torch.Tensor] | None = None) -> dict:
    """Validation without clean images: the self-supervised loss on fixed patches of the held-out noisy
    images (it tracks the error to the unknown clean image, up to a constant); with ``clean``
    copies, also the PSNR of the noisy images and of their whole-image restorations."""
    module = model.module if hasattr(model, "module") else model
    module.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    sampler = PatchSampler(val, cfg.model.patch_size, 64)
    noisy_patches = sampler.sample(gen).to(device).float().div_(255.0)
    out = {"val_ss_loss": float(self_supervised_loss(module, noisy_patches, cfg, gen))}
    if clean:
        noisy_db, model_db = [], []
        for n_img, c_img in zip(val, clean):
            noisy = n_img.unsqueeze(0).to(device).float().div_(255.0)
            ref = c_img.unsqueeze(0).to(device).float().div_(255.0)
            restored = restore_tiles(lambda x: module(x).clamp(0, 1), noisy, cfg.model.patch_size, cfg.val_stride,
                                 blend=Blend.GAUSSIAN)
            noisy_db.append(batch_psnr(ref, noisy))
            model_db.append(batch_psnr(ref, restored))
        out.update(val_psnr_noisy=float(torch.cat(noisy_db).mean()), val_psnr=float(torch.cat(model_db).mean()))
    module.train()
    return out


def _validate(model, val, cfg: TrainConfig, device, val_clean) -> dict:
    if not val:
        return {}
    if cfg.self_supervised:
        return validate_self_supervised(model, val, cfg, device, val_clean)
    return validate(model, val, cfg, device)


def _resume_state(model, optimizer) -> dict:
    """Load the latest checkpoint of this run, if Ray Train has one; returns its bookkeeping."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": 0, "history": [], "best_val_psnr": -math.inf, "best_epoch": 0, "best_model": None,
                "stopped": "", "resumed_at": [], "elapsed_s": 0.0}
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, ckpt.CHECKPOINT_FILE), "rb") as f:
            state = ckpt.parse(f.read(), d)
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    progress = state["progress"]
    # A record of every resume (a re-run, or Ray Train restarting failed workers), for the history.
    return {"elapsed_s": 0.0, **progress, "resumed_at": [*progress.get("resumed_at", []), progress["epoch"]]}


def _save_and_report(model, optimizer, cfg: TrainConfig, progress: dict, metrics: dict) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (DDP weights are identical on all ranks)."""
    import ray.train

    if _world()[0] != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        state = ckpt.checkpoint_state(model, cfg.model, noise=cfg.noise.to_dict(), train_config=cfg.to_dict(),
                                      metrics=metrics, optimizer=optimizer.state_dict(), progress=progress)
        ckpt.save(state, d)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _announce(queue, metrics: dict) -> None:
    """Hand rank 0's epoch metrics to the driver, which prints one line per epoch."""
    if queue is None or _world()[0] != 0:
        return
    try:
        queue.put_nowait(metrics)
    except Exception:  # noqa: BLE001 - a full or gone queue costs a progress line, never the run
        pass


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: runs on every worker."""
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    prepare_worker(max(1, int(cfg.cpus_per_worker)))  # the CPUs Ray reserved for us; see raeae.worker
    device = ray.train.torch.get_device()
    source, storage = ray.get(config["source"]), config["storage"]
    rank, world = _world()
    images = _tensors(source.train_share(rank, world, cfg.model.channels, storage))
    if not images:  # every file of this rank's share failed to decode (each was named on its own line)
        raise ValueError(f"training worker {rank}: none of its share of {source.uri} could be read")
    # The loss's config carries the scheme and noise σ decided from the data; checkpoints keep the
    # config as given, so a resume compares like with like (the decision is in each epoch's metrics).
    loss_cfg = resolve_self_supervision(cfg, images)
    sampler = make_sampler(images, cfg, _world()[1])
    model = build_model(cfg.model)
    if config.get("init_weights") is not None:
        model.load_state_dict(config["init_weights"])  # fine-tuning: start from a trained model
    else:
        model.init_output_bias(sampler.mean_patch())  # DDP then broadcasts rank 0's weights to all ranks
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    progress = _resume_state(model, optimizer)
    model = ray.train.torch.prepare_model(model)
    optimizer_to(optimizer, device)
    val, val_clean = [], None
    if _world()[0] == 0:
        if config.get("val_pairs"):  # self-supervised with clean copies: (noisy, clean) from the driver
            val = [torch.from_numpy(n.copy()).permute(2, 0, 1) for n, _ in config["val_pairs"]]
            val_clean = [torch.from_numpy(c.copy()).permute(2, 0, 1) for _, c in config["val_pairs"]]
        else:
            val = _tensors(source.validation(cfg.model.channels, storage))
    trainer = EpochTrainer(loss_cfg, model, optimizer, sampler, device)
    clock = Clock(cfg.budget_s, spent_s=progress["elapsed_s"])
    loop_s = 0.0
    while not progress["stopped"]:
        epoch = progress["epoch"] + 1
        stats = trainer.run_epoch(epoch, clock)
        loop_s += stats["epoch_s"]
        metrics = {"epoch": epoch, **stats, **_validate(model, val, loss_cfg, device, val_clean)}
        if loss_cfg.self_supervised:  # what --scheme auto chose, and the σ recorrupt used
            metrics["recorrupt"] = int(loss_cfg.scheme is Scheme.RECORRUPT)
            if loss_cfg.scheme is Scheme.RECORRUPT:
                metrics["noise_sigma"] = loss_cfg.noise_sigma
        progress = _advance(progress, metrics, model)
        progress["stopped"] = decide_stop(cfg, progress, clock)
        progress["elapsed_s"] = clock.elapsed()
        metrics.update(best_val_psnr=progress["best_val_psnr"], best_epoch=progress["best_epoch"],
                       train_loop_s=loop_s, elapsed_s=progress["elapsed_s"], stopped=progress["stopped"])
        _save_and_report(model, optimizer, cfg, progress, metrics)
        _announce(config.get("progress_queue"), metrics)


def _advance(progress: dict, metrics: dict, model) -> dict:
    """Bookkeeping after an epoch: history, and the best weights so far (rank 0 validates)."""
    module = model.module if hasattr(model, "module") else model
    p = dict(progress)
    p["epoch"] = metrics["epoch"]
    p["history"] = [*progress["history"], {k: v for k, v in metrics.items() if isinstance(v, (int, float))}]
    # Higher is better: the validation PSNR, or minus the self-supervised loss when no clean copy exists.
    score = metrics.get("val_psnr", -metrics.get("val_ss_loss", math.inf))
    if _world()[0] == 0 and score > p["best_val_psnr"]:
        p["best_val_psnr"], p["best_epoch"] = score, metrics["epoch"]
        p["best_model"] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return p


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a resumed optimizer's state to the training device."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)


# --- the driver ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    checkpoint_uri: str  # the best model, in cfg.output
    metrics: dict  # the last epoch's metrics
    best_val_psnr: float
    best_val_psnr_noisy: float
    best_epoch: int
    fit_s: float  # wall time of TorchTrainer.fit() (0 when nothing was left to train)
    loop_s: float  # time inside the training loops (the rest of fit_s is Ray's overhead)
    history: list
    resumed_at: list  # epochs after which this run was resumed from a checkpoint
    run_name: str = ""
    stopped: str = ""  # why training ended: time budget, patience, epochs
    epochs_trained: int = 0  # by this invocation
    minutes_trained: float = 0.0  # wall minutes of training (with validation) by this invocation


def auto_cpus_per_worker(workers: int, node_cpus: list[float]) -> float:
    """CPUs per worker when not given: the largest node's CPUs shared by the workers placed on it, so
    one worker gets the whole machine (torch then runs its GEMMs on every core)."""
    largest = max(node_cpus, default=1.0)
    per_node = math.ceil(workers / max(1, sum(1 for c in node_cpus if c >= 1)))
    return float(max(1, int(largest // max(1, per_node))))


def require_workers(cfg: TrainConfig, nodes: list[dict]) -> None:
    """Fail fast when the workers cannot fit on this machine's private Ray (see
    :func:`raeae.cluster.require`), naming the flag to change."""
    bundle = {"CPU": cfg.cpus_per_worker, "GPU": 1.0 if cfg.gpu else 0.0}
    require("raeae train", f"--workers {cfg.workers}", cfg.workers, bundle, nodes,
            f"at most {capacity(bundle, nodes)} such workers fit: use fewer --workers or a smaller "
            f"--cpus-per-worker, or join a larger cluster (RAY_ADDRESS)")


def init_weights(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """With ``--init``: the starting checkpoint's model config (it replaces the model flags) and
    weights. Fails before Ray starts if the checkpoint cannot be used."""
    if not cfg.init:
        return cfg, None
    state, _ = ckpt.load_state(cfg.init, cfg.storage)
    model_cfg = ModelConfig.from_dict(state["model_config"])
    if model_cfg.channels == 1 and cfg.model.planes:
        # A gray network is exactly the shared plane network of an opponent-colour model, so
        # `--channels 3 --init builtin:gray` starts colour training from the gray model.
        model_cfg = replace(model_cfg, channels=3, color=cfg.model.color)
    weights = {k: v.float() for k, v in state["model"].items()}  # bundled models are stored in fp16
    if cfg.model.noise_input and not model_cfg.noise_input:
        # `--noise-input --init M`: the level's input weights start at zero, so training starts from
        # exactly what M restores and learns what the level adds.
        if model_cfg.jpeg_input:
            raise ValueError("--noise-input --init: the checkpoint takes JPEG inputs but no noise level")
        model_cfg = replace(model_cfg, noise_input=True)
        first = weights["encoder.0.weight"]
        weights["encoder.0.weight"] = torch.cat([first, first.new_zeros(first.shape[0], 1)], dim=1)
    if cfg.model.jpeg_input and not model_cfg.jpeg_input:
        # `--jpeg-input --init M`: the JPEG inputs come last, their weights start at zero (as the level's)
        model_cfg = replace(model_cfg, jpeg_input=True)
        first = weights["encoder.0.weight"]
        weights["encoder.0.weight"] = torch.cat([first, first.new_zeros(first.shape[0], JPEG_INPUTS)], dim=1)
    return replace(cfg, model=model_cfg, stride=min(cfg.stride, model_cfg.patch_size)), weights


def clean_pairs(source, cfg: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """With --self-supervised --val-clean: (noisy, clean) uint8 H×W×C pairs of the held-out files,
    matched by file name, for a validation PSNR."""
    if not (cfg.self_supervised and cfg.val_clean):
        return None
    if not source.val_files:
        raise ValueError("--val-clean needs a folder of noisy images as --data")
    stem = lambda p: posixpath.splitext(posixpath.basename(p))[0]  # noqa: E731
    clean_files = {stem(f["path"]): f["path"] for f in list_images(cfg.val_clean, cfg.storage)}
    fs, _ = resolve(cfg.data, cfg.storage)
    clean_fs, _ = resolve(cfg.val_clean, cfg.storage)
    pairs = []
    for path in source.val_files:
        if stem(path) not in clean_files:
            continue
        noisy = read_image(fs, path, cfg.model.channels)
        ref = read_image(clean_fs, clean_files[stem(path)], cfg.model.channels)
        if ref.shape == noisy.shape:
            pairs.append((noisy, ref))
    if not pairs:
        raise ValueError(f"--val-clean {cfg.val_clean}: no clean image matches a held-out file of {cfg.data} by name")
    return pairs


def epoch_line(m: dict, cfg: TrainConfig) -> str:
    """One line per epoch for the terminal."""
    where = f"epoch {m['epoch']}" + (f"/{cfg.epochs}" if cfg.epochs else "")
    if math.isfinite(cfg.budget_s):
        where += f" ({max(0.0, cfg.budget_s - m.get('elapsed_s', 0.0)) / 60:.1f} min left)"
    val = (f", validation PSNR {m['val_psnr']:.2f} dB (noisy {m['val_psnr_noisy']:.2f})"
           if "val_psnr" in m else "")
    if "val_ss_loss" in m:
        scheme = f"recorrupt, noise σ {m['noise_sigma']:.1f}" if "noise_sigma" in m else "blind-spot"
        val = f", self-supervised ({scheme}) validation loss {m['val_ss_loss']:.5f}" + val
    return (f"raeae train: {where}: loss {m['train_loss']:.5f}{val}, {m['samples_per_s']:,.0f} samples/s"
            + (f"; stopping: {m['stopped']}" if m.get("stopped") else ""))


class EpochPrinter:
    """Prints rank 0's epoch metrics on the driver as they arrive (a Ray queue; the workers' own
    output stays off the terminal unless --verbose)."""

    def __init__(self, cfg: TrainConfig):
        from ray.util.queue import Queue

        self.cfg = cfg
        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _drain(self, timeout: float) -> None:
        from ray.util.queue import Empty

        try:
            m = self.queue.get(timeout=timeout)
        except (Empty, Exception):  # noqa: BLE001 - a lost progress line must not end the run
            return
        print(epoch_line(m, self.cfg), flush=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self._drain(0.5)

    def __enter__(self) -> "EpochPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        while not self.queue.empty():
            self._drain(0.1)
        self.queue.shutdown()


# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), so it
# notices that training has ended up to two polls late. Measured on a 1-epoch run on 2 CPUs: fit() returned
# 5.1 s after the last report at 2 s, 1.6 s at 0.5 s (26.4 s against 30.3 s end to end). The driver's value
# reaches the controller and the workers on any cluster (Ray Train propagates it); a user's own wins.
HEALTH_CHECK_ENV, HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


@contextlib.contextmanager
def env_default(name: str, value: str):
    """``name=value`` in this process's environment while the block runs, unless the user set ``name``;
    afterwards the environment is as it was (train() is a library call, not only a command)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def train(cfg: TrainConfig, verbose: bool = False) -> TrainResult:
    """Train on Ray Train and write the best checkpoint to ``cfg.output``. Joins the running Ray, or
    starts a local one (:func:`raeae.cluster.connect`)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not cfg.data:
        raise ValueError("--data is required: an MNIST IDX folder or a folder of clean images")
    if not cfg.output:
        raise ValueError("--output is required: where the best checkpoint goes")
    cfg, weights = init_weights(cfg)
    source = load_source(cfg.data, cfg.model.channels, cfg.val_fraction, cfg.seed, cfg.storage, cfg.max_images)
    if source.train_count < cfg.workers:  # each rank trains on its own share of the images
        raise ValueError(f"{source.train_count} training image(s) for {cfg.workers} workers: each worker "
                         f"needs at least one; use fewer --workers")
    pairs = clean_pairs(source, cfg)
    storage_path = cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    run = choose_run(cfg.run_name, cfg.resume, storage_path, cfg.storage, cfg.to_dict())
    if run.finished:
        print(f"raeae train: run {run.name} already finished ({run.finished}, epoch {run.epoch}); nothing "
              f"to train; its best model goes to {cfg.output}")
        return _export_best(cfg, run.latest, 0.0, run.name, start_epoch=run.epoch)
    connect(verbose)
    nodes = alive_nodes()
    cfg = replace(cfg, cpus_per_worker=cfg.cpus_per_worker or auto_cpus_per_worker(
        cfg.workers, [n.get("CPU", 0.0) for n in nodes]))
    require_workers(cfg, nodes)
    print(f"raeae train: {source.description}; model {describe_network(cfg.model)}"
          f"{'; from ' + cfg.init if cfg.init else ''}")
    print(f"raeae train: run {run.name} ({'resumed at epoch ' + str(run.epoch) if run.resumed else 'new'}), "
          f"{cfg.workers} worker(s) x {cfg.cpus_per_worker:g} CPU{' + GPU' if cfg.gpu else ''}, "
          f"{budget_text(cfg.epochs, cfg.max_minutes)}")
    if not run.resumed:
        write_record(storage_path, cfg.storage, run.name, cfg.to_dict())
    with env_default(HEALTH_CHECK_ENV, HEALTH_CHECK_S), EpochPrinter(cfg) as printer:
        trainer = TorchTrainer(
            train_loop_per_worker,
            # The source goes through the object store once (an IDX source holds every image); each
            # worker reads its own share of it (see TrainingSource.train_share).
            train_loop_config={"cfg": cfg, "init_weights": weights, "progress_queue": printer.queue,
                               "val_pairs": pairs, "source": ray.put(source),
                               "storage": cfg.storage.with_environment()},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                                   resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=run.name, storage_path=storage_path,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=cfg.failures)),
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, ckpt.CHECKPOINT_FILE), "rb") as f:
            state = ckpt.parse(f.read(), d)
    return _export_best(cfg, state, fit_s, run.name, start_epoch=run.epoch)


def _export_best(cfg: TrainConfig, state: dict, fit_s: float, run_name: str, start_epoch: int) -> TrainResult:
    """Write a slim checkpoint (best weights, no optimizer) to ``cfg.output``."""
    progress = state["progress"]
    best_epoch = progress["best_epoch"]
    best = next((h for h in progress["history"] if h["epoch"] == best_epoch), state["metrics"])
    slim = {k: v for k, v in state.items() if k not in ("optimizer", "progress")}
    slim["model"] = progress["best_model"] or state["model"]
    slim["metrics"] = best
    slim["history"] = progress["history"]
    slim["inference"] = {"stride": cfg.val_stride}
    buf_dir = tempfile.mkdtemp()
    local = ckpt.save(slim, buf_dir)
    fs, path = resolve(cfg.output, cfg.storage)
    with open(local, "rb") as f:
        write_bytes(fs, f"{path}/{ckpt.CHECKPOINT_FILE}", f.read())
    shutil.rmtree(buf_dir, ignore_errors=True)
    loop_s = float(state["metrics"].get("train_loop_s", 0.0))
    before = next((h.get("elapsed_s", 0.0) for h in progress["history"] if h["epoch"] == start_epoch), 0.0)
    return TrainResult(checkpoint_uri=cfg.output, metrics=state["metrics"], best_val_psnr=best.get("val_psnr", math.nan),
                       best_val_psnr_noisy=best.get("val_psnr_noisy", math.nan), best_epoch=best_epoch,
                       fit_s=fit_s, loop_s=loop_s, history=progress["history"],
                       resumed_at=list(progress.get("resumed_at", [])), run_name=run_name,
                       stopped=progress.get("stopped", ""), epochs_trained=progress["epoch"] - start_epoch,
                       minutes_trained=(progress.get("elapsed_s", 0.0) - before) / 60)
