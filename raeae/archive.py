"""Learn from the damaged archive itself, then restore all of it: one job for archives that have no
clean copies.

Step 1 trains a model on (a sample of) the archive's own noisy images (``TrainConfig.self_supervised``:
recorrupted pairs for Gaussian-like noise, blind-spot masking for impulse noise, chosen from the
images); step 2 is a nightly run with that model, so the output has the nightly guarantees (exactly
once, committed by a manifest). The model is kept under
``OUTPUT/_models/<run id>/`` and the run's manifest names it, so every row can be traced to the model
that made it and that model to its training settings and data.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace

from raeae.data import read_image
from raeae.lock import OutputLock
from raeae.model import photo_config
from raeae.cliutil import require_settings
from raeae.incremental import NightlyConfig, new_run_id, nightly
from raeae.restoring import RestoreConfig
from raeae.storage import StorageConfig, StorageError, explain, list_images, resolve
from raeae.training import train
from raeae.train_config import Preset, Scheme, budget_checks, budget_text


@dataclass(frozen=True)
class ArchiveConfig:
    """Learn from a noisy archive itself (no clean images needed), then restore all of it."""

    archive: str = field(default="", metadata={"help": "folder or prefix of the noisy archive (local, s3://...)"})
    output: str = field(default="", metadata={"help": "nightly-style output: run=<id>/, _manifests/, and the "
                                                      "model under _models/<id>/"})
    max_minutes: float = field(default=10.0, metadata={"help": "training time budget (10: see the README's "
                                                               "self-supervised quality row)"})
    epochs: int = field(default=0, metadata={
        "help": "passes over the archive's training patches (at least 100 batches each); 0 = train until "
                "--max-minutes is spent. With both, whichever comes first: an epoch count makes a run "
                "learn the same on any hardware, a time budget bounds its cost"})
    max_images: int = field(default=2000, metadata={"help": "learn from a random sample of at most this many "
                                                            "archive files (a few thousand patches-rich images "
                                                            "are plenty for a patch model)"})
    channels: int = field(default=0, metadata={"help": "1 gray or 3 colour model; 0 = what most of the first "
                                                       "50 archive images are"})
    scheme: Scheme = field(default=Scheme.AUTO, metadata={
        "help": "how to learn from noisy images alone: recorrupt (Gaussian-like noise, of std --noise-sigma "
                "or estimated), blind-spot (any pixel-independent noise, salt-and-pepper too), or auto "
                "(recorrupt unless the archive's noise is impulsive)"})
    noise_sigma: float = field(default=0.0, metadata={
        "help": "with --scheme recorrupt: the archive's noise std (0-255); 0 = estimate it from the images"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers"})
    gpu: bool = field(default=False, metadata={"help": "train and restore on GPUs"})
    copy_metadata: bool = field(default=True, metadata={
        "help": "copy each source's colour profile, EXIF and DPI into its restored PNG (see `raeae restore "
                "--help`); --no-copy-metadata leaves them out"})
    run_id: str = field(default="", metadata={"help": "name of the run (default: UTC time)"})
    seed: int = field(default=0, metadata={"help": "seed for the sample, masking and init"})
    storage: StorageConfig = StorageConfig()

    def __post_init__(self) -> None:
        if self.channels not in (0, 1, 3):
            raise ValueError(f"channels must be 0, 1 or 3, got {self.channels}")
        if self.noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        for ok, msg in budget_checks(self.epochs, self.max_minutes):
            if not ok:
                raise ValueError(msg)


def majority_channels(archive: str, storage: StorageConfig, look_at: int = 50) -> int:
    """3 if most of the first ``look_at`` decodable images are colour, else 1."""
    fs, _ = resolve(archive, storage)
    colour = gray = 0
    for f in list_images(archive, storage)[:look_at]:
        try:
            img = read_image(fs, f["path"])
        except (OSError, ValueError):
            continue
        is_colour = img.ndim == 3 and img.shape[2] >= 3  # RGB(A); L and LA are gray, as restore sees them
        colour, gray = colour + is_colour, gray + (not is_colour)
    return 3 if colour > gray else 1


def self_train_and_restore(cfg: ArchiveConfig, verbose: bool = False) -> dict:
    """Train on the archive (self-supervised), then restore it with that model; returns the manifest."""
    require_settings(cfg, "archive", "output")
    run_id = cfg.run_id or new_run_id()
    try:  # is another run writing to the output? asked before minutes of training; step 2 takes the lock
        OutputLock(*resolve(cfg.output, cfg.storage), run_id).free()
    except OSError as exc:
        raise StorageError(explain(exc, cfg.output)) from None
    root = cfg.output.rstrip("/")
    model_dir = posixpath.join(root, "_models", run_id)
    channels = cfg.channels or majority_channels(cfg.archive, cfg.storage)
    print(f"raeae archive: step 1/2: learn from the noisy images of {cfg.archive} ({'colour' if channels == 3 else 'gray'} "
          f"model, up to {cfg.max_images} files, {budget_text(cfg.epochs, cfg.max_minutes)})")
    recipe = replace(Preset.ARCHIVE.config(), data=cfg.archive, output=model_dir, model=photo_config(channels),
                     scheme=cfg.scheme, noise_sigma=cfg.noise_sigma, max_images=cfg.max_images,
                     epochs=cfg.epochs, max_minutes=cfg.max_minutes, workers=cfg.workers, gpu=cfg.gpu, seed=cfg.seed,
                     storage=cfg.storage, storage_path=posixpath.join(root, "_models", "ray"))
    train(recipe, verbose=verbose)
    print(f"raeae archive: step 2/2: restore all of {cfg.archive} with it")
    return nightly(restore_step(cfg, model_dir, run_id), verbose=verbose)


def restore_step(cfg: ArchiveConfig, model_dir: str, run_id: str) -> NightlyConfig:
    """The nightly run that restores the archive with the model just trained, on the same kind of
    worker (--gpu) as the training."""
    return NightlyConfig(model=model_dir, archive=cfg.archive, output=cfg.output, run_id=run_id,
                         restore=RestoreConfig(gpu=cfg.gpu, copy_metadata=cfg.copy_metadata))
