"""The main job end to end on embedded sample photographs: fine-tune the bundled gray model on Ray
Train, make a noisy archive of held-out photographs (plus a corrupt file and a non-image), restore it
with Ray Data into Parquet, and measure the result against the clean originals and classical
denoisers."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from raeae.corrupt import NoiseConfig
from raeae.data import SAMPLE_HELD_OUT, SAMPLE_TRAIN, copy_samples
from raeae.evaluate import EvaluateConfig, evaluate, make_noisy
from raeae.images import decode
from raeae.metrics import psnr
from raeae.restoring import RestoreConfig, restore
from raeae.training import train
from raeae.train_config import TrainConfig


@dataclass(frozen=True)
class DemoConfig:
    """Run the whole pipeline on embedded sample photographs (no data or network needed)."""

    workdir: str = field(default="runs/demo", metadata={"help": "local folder for everything the demo "
                                                                "makes; emptied first"})
    sigma: float = field(default=25.0, metadata={"help": "Gaussian σ (0-255) of the demo archive's noise"})
    init: str = field(default="builtin:gray", metadata={
        "help": "model the demo fine-tunes (a 90 s model trained from scratch on 12 photographs stays "
                "below TV and NL-means; the bundled one starts above them); '' = train from scratch"})
    epochs: int = field(default=0, metadata={"help": "training epochs (0 = until --max-minutes is spent)"})
    max_minutes: float = field(default=1.5, metadata={"help": "training time budget, to keep the demo "
                                                              "under ~5 minutes on 2 CPUs"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate, cosine-decayed (fine-tuning "
                                                      "takes smaller steps than training from scratch)"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (1 worker with every CPU is "
                                                      "fastest on one machine)"})
    seed: int = field(default=0, metadata={"help": "seed for training and the archive's noise"})


@dataclass(frozen=True)
class SamplesConfig:
    """Write a noisy sample archive of the embedded photographs, to try restore and nightly on."""

    output: str = field(default="runs/sample-archive", metadata={"help": "local folder for the archive"})
    sigma: float = field(default=25.0, metadata={"help": "Gaussian σ (0-255) of the archive's noise"})
    bad_files: bool = field(default=True, metadata={"help": "add a truncated PNG and a text file named .png, "
                                                            "which restore turns into error rows"})
    seed: int = field(default=0, metadata={"help": "seed of the noise"})


def samples(cfg: SamplesConfig) -> list[str]:
    """Noisy PNGs of all embedded sample photographs (gray and colour) under ``cfg.output``."""
    import tempfile

    with tempfile.TemporaryDirectory() as clean:
        copy_samples(clean, SAMPLE_TRAIN + SAMPLE_HELD_OUT)
        _make_archive(clean, cfg.output, NoiseConfig(sigma=cfg.sigma), cfg.seed, cfg.bad_files)
    names = sorted(os.listdir(cfg.output))
    print(f"raeae samples: {len(names)} files in {cfg.output} (σ={cfg.sigma:g})")
    return names


def _make_archive(clean_dir: str, archive: str, noise: NoiseConfig, seed: int, bad_files: bool = True) -> None:
    """Noisy PNG copies of the held-out photographs, plus two files that must become error rows."""
    os.makedirs(archive, exist_ok=True)
    for i, name in enumerate(sorted(os.listdir(clean_dir))):
        with open(os.path.join(clean_dir, name), "rb") as f:
            clean, _ = decode(f.read())
        noisy = make_noisy(clean, noise, seed + i)
        Image.fromarray(noisy).save(os.path.join(archive, posixpath.splitext(name)[0] + ".png"))
    if not bad_files:
        return
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buf, format="PNG")
    with open(os.path.join(archive, "broken.png"), "wb") as f:
        f.write(buf.getvalue()[:40])  # a truncated PNG
    with open(os.path.join(archive, "notes.png"), "w") as f:
        f.write("this is text, not an image\n")


def demo(cfg: DemoConfig, verbose: bool = False) -> dict:
    from raeae.cluster import connect
    from raeae.contract import read_restored

    work = os.path.abspath(cfg.workdir)
    shutil.rmtree(work, ignore_errors=True)
    clean_train, clean_test = os.path.join(work, "clean", "train"), os.path.join(work, "clean", "test")
    copy_samples(clean_train, SAMPLE_TRAIN)
    copy_samples(clean_test, SAMPLE_HELD_OUT)
    noise = NoiseConfig(sigma=cfg.sigma)
    start = f"fine-tune {cfg.init}" if cfg.init else "train a photo model"
    print(f"== 1/4 {start} on {len(SAMPLE_TRAIN)} sample photographs (Ray Train, {cfg.workers} worker(s), "
          f"{cfg.max_minutes:g} min)")
    connect(verbose)
    model_dir = os.path.join(work, "model")
    result = train(TrainConfig(data=clean_train, output=model_dir, init=cfg.init, noise=noise, epochs=cfg.epochs,
                               max_minutes=cfg.max_minutes, workers=cfg.workers, lr=cfg.lr, seed=cfg.seed,
                               val_fraction=0.15, storage_path=os.path.join(work, "ray")), verbose=verbose)
    print(f"   validation PSNR: noisy {result.best_val_psnr_noisy:.2f} dB -> model {result.best_val_psnr:.2f} dB "
          f"({result.epochs_trained} epochs, {result.minutes_trained:.1f} min)")
    archive = os.path.join(work, "archive")
    print(f"== 2/4 noisy archive of {len(SAMPLE_HELD_OUT)} held-out photographs (σ={cfg.sigma:g}) + 2 bad files")
    _make_archive(clean_test, archive, noise, cfg.seed)
    print("== 3/4 restore the archive with Ray Data into Parquet")
    restored = os.path.join(work, "restored")
    summary = restore(RestoreConfig(model=model_dir, input=archive, output=restored), verbose=verbose)
    table = read_restored(restored)
    gains = []
    for path, status, png in zip(table["path"].to_pylist(), table["status"].to_pylist(), table["image"].to_pylist()):
        stem = posixpath.splitext(posixpath.basename(path))[0]
        matches = [n for n in os.listdir(clean_test) if posixpath.splitext(n)[0] == stem]
        if status != "ok" or not matches:
            continue
        with open(os.path.join(clean_test, matches[0]), "rb") as f:
            clean = decode(f.read())[0]
        with open(path, "rb") as f:
            noisy = decode(f.read())[0]
        gains.append((stem, psnr(clean, noisy), psnr(clean, decode(png)[0])))
    for stem, before, after in gains:
        print(f"   {stem:<16} noisy {before:6.2f} dB -> restored {after:6.2f} dB")
    errors = [(p, e) for p, s, e in zip(table["path"].to_pylist(), table["status"].to_pylist(),
                                        table["error"].to_pylist()) if s != "ok"]
    for path, error in errors:
        print(f"   {posixpath.basename(path):<16} error row: {error}")
    print("== 4/4 evaluate against classical denoisers on the same held-out photographs")
    ev = evaluate(EvaluateConfig(model=model_dir, data=clean_test, noise=noise, seed=cfg.seed,
                                 output=os.path.join(work, "evaluate")))
    print(f"\nParquet: {restored}  summary: {restored}/_summary.json  report: {restored}/_report.html  "
          f"grid: {ev['grid']}  model: {model_dir}")
    return {"train": result, "restore": summary, "gains": gains, "evaluate": ev}
