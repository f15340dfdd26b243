"""What a training run is asked to do: its config (one frozen dataclass, nested model and noise configs that
checkpoints store), the recipes (presets) of defaults for kinds of data, and the one function that turns
a request (the flags a user gave, or the keyword arguments of ``raeae.training``) into a ``TrainConfig``:
the CLI and the library resolve a request the same way.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from raeae.corrupt import Noise, NoiseConfig
from raeae.data import find_idx
from raeae.model import ModelConfig, digits_config, photo_config
from raeae.settings import Precision, default_stride
from raeae.storage import StorageConfig, StorageError


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
                "it); with --epochs too, whichever comes first"})
    patience: int = field(default=0, metadata={
        "help": "stop after this many epochs without a better validation PSNR (0 = never: with a cosine "
                "schedule the last epochs are the best ones)"})
    batch_size: int = field(default=256, metadata={
        "help": "patches per optimizer step over all workers (each of N workers takes 1/N), so results "
                "do not depend on the worker count"})
    lr: float = field(default=3e-4, metadata={
        "help": "Adam learning rate (decayed to 0 over the run with --cosine)"})
    loss: Loss = field(default=Loss.MSE, metadata={"help": "reconstruction loss"})
    sigma_balance: float = field(default=0.0, metadata={
        "help": "blind training (--sigma-max): weigh each patch's squared error by (25/σ)^this, σ that patch's "
                "own noise level (at least 5). A denoiser's error grows about linearly with σ, so plain MSE (0) "
                "is ruled by the noisiest patches; 0 = plain MSE (it moves quality between noise levels "
                "without adding any: bench/RESULTS.md)"})
    cosine: bool = field(default=True, metadata={
        "help": "cosine-decay the learning rate to 0 over the run (epochs, or the time budget if that "
                "ends first)"})
    workers: int = field(default=1, metadata={
        "help": "Ray Train workers (data-parallel DDP ranks); on one machine 1 worker with every CPU is "
                "fastest (bench/RESULTS.md)"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per worker (on a GPU cluster)"})
    cpus_per_worker: float = field(default=0.0, metadata={
        "help": "CPUs reserved per worker, and torch's threads; 0 = the largest node's CPUs shared by "
                "the workers, so one worker uses the whole machine"})
    patches_per_image: int = field(default=0, metadata={
        "help": "random patches per image per epoch (0 = about one non-overlapping cover of each image)"})
    precision: Precision = field(default=Precision.AUTO, metadata={
        "help": "number format of the forward/backward matrix multiplies: auto = bf16 where the hardware has "
                "it natively (GPUs, CPUs with AVX512-BF16/AMX), else fp32; weights and Adam stay fp32"})
    augment: bool = field(default=True, metadata={
        "help": "random flips and 90° rotations of patches: helps on photographs, hurts on oriented "
                "content such as digits (the digits preset turns them off)"})
    self_supervised: bool = field(default=False, metadata={
        "help": "learn from noisy images alone (--data is the damaged archive; no noise is added), with "
                "--scheme"})
    scheme: Scheme = field(default=Scheme.AUTO, metadata={
        "help": "with --self-supervised: recorrupt = Recorrupted-to-Recorrupted pairs, loss on every pixel, "
                "for Gaussian-like noise (σ from --noise-sigma or estimated); blind-spot = Noise2Void "
                "masking, loss on hidden pixels, for any pixel-independent noise (salt-and-pepper too); "
                "auto = recorrupt unless the images' noise is impulsive"})
    noise_sigma: float = field(default=0.0, metadata={
        "help": "with --scheme recorrupt: the archive's noise std on the 0-255 scale; 0 = estimate it "
                "(median over the training images of Donoho's MAD estimate)"})
    recorrupt_alpha: float = field(default=0.3, metadata={
        "help": "with --scheme recorrupt: the extra noise is alpha*z on the input and -z/alpha on the "
                "target; smaller alpha keeps training inputs closer to the archive's noise level (the "
                "model learns noise of σ*sqrt(1+alpha^2)), larger alpha makes targets less noisy"})
    mask_ratio: float = field(default=0.125, metadata={
        "help": "with --self-supervised: share of each patch's pixels hidden and predicted"})
    val_clean: str = field(default="", metadata={
        "help": "with --self-supervised: clean copies of the images (same file names), to report a "
                "validation PSNR; without it validation reports the self-supervised loss"})
    max_images: int = field(default=0, metadata={
        "help": "train on a random sample of at most this many files of --data (0 = all)"})
    stride: int = field(default=0, metadata={
        "help": "tile stride for whole-image validation, recorded as restore's default (0 = patch/2)"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of images held out for validation"})
    seed: int = field(default=0, metadata={"help": "random seed for the split, patches, noise and init"})
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
                  (not (self.model.margin and self.self_supervised),
                   "--margin trains supervised only: self-supervised losses compare a patch with itself"),
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


def resolve(preset: Preset | str = Preset.AUTO, **given) -> tuple[Preset, TrainConfig]:
    """The training config a request asks for, for the CLI (``raeae train`` with its flags) and the
    library (``raeae.train(data=..., ...)``) alike: ``given`` are settings by name (``data``,
    ``max_minutes``, ``patch_size``, ``sigma_max``, ... as the flags name them; None = not given).

    * The preset's recipe (auto: archive with ``self_supervised``, digits for MNIST IDX data, photo
      otherwise) gives every setting not given.
    * ``max_minutes`` without ``epochs`` trains until the budget is spent, whatever the preset's epoch count.
    * Blind Gaussian training (``sigma_max`` above ``sigma``), and shot-noise and JPEG training, tell the
      network the noise level unless ``noise_input=False`` says not to (why: bench/RESULTS.md, "Told the
      noise level"); JPEG training tells it the JPEG damage unless ``jpeg_input=False``."""
    from raeae.cliutil import config_from_settings, config_from_values

    config_from_settings(TrainConfig, given)  # an unknown name fails here, with one line
    given = {k: v for k, v in given.items() if v is not None}
    preset = Preset(preset)
    if preset is Preset.AUTO:
        storage = config_from_values(StorageConfig, given)
        preset = Preset.ARCHIVE if given.get("self_supervised") else detect_preset(given.get("data", ""), storage)
    if "max_minutes" in given and "epochs" not in given:
        given["epochs"] = 0
    cfg = config_from_values(TrainConfig, given, base=preset.config())
    model = cfg.model
    if "noise_input" not in given and cfg.knows_noise_level and (cfg.noise.blind or cfg.noise.noise is not Noise.GAUSSIAN):
        model = replace(model, noise_input=True)
    if "jpeg_input" not in given and cfg.noise.noise is Noise.JPEG and not cfg.self_supervised:
        model = replace(model, jpeg_input=True)
    return preset, replace(cfg, model=model)
