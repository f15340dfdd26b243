"""Bundled models: a trained checkpoint packaged as package data, in fp16, with its provenance.

A bundled model is what ``raeae restore`` uses before anyone has trained anything, so it must say
where it came from: the command that trained it, the commit, the data, the training minutes and the
PSNRs measured when it was packaged (:func:`package`). ``bench/release_models.sh`` holds the
commands that made the models in ``raeae/models/``.
"""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import torch

from raeae import checkpoint as ckpt
from raeae.corrupt import NoiseConfig
from raeae.data import load_images
from raeae.evaluate import make_noisy
from raeae.inference import restore_array
from raeae.metrics import psnr


def measure(model, images: list[tuple[str, np.ndarray]], sigmas: list[float], seed: int = 0,
            stride: int | None = None) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) of the noisy input and of the model at each σ, on the benchmark's protocol
    (noise from ``seed + image index``, clipped and quantised to 8 bits)."""
    out = {}
    for sigma in sigmas:
        noisy_db, model_db = [], []
        for i, (_, clean) in enumerate(images):
            noisy = make_noisy(clean, NoiseConfig(sigma=sigma), seed + i)
            noisy_db.append(psnr(clean, noisy))
            model_db.append(psnr(clean, restore_array(model, noisy, stride)))
        out[f"{sigma:g}"] = {"noisy": round(float(np.mean(noisy_db)), 3), "model": round(float(np.mean(model_db)), 3)}
    return out


def measure_jpeg(model, images: list[tuple[str, np.ndarray]], qualities: list[int]) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) of each image saved as a JPEG at each quality (Pillow's libjpeg) and of the model's
    restoration of it, told the quality as restore reads it from the file's tables."""
    from raeae.jpeg import JpegFinding, compress, ijg_scale

    out = {}
    for quality in qualities:
        jpeg_db, model_db = [], []
        for _, clean in images:
            damaged = compress(clean, quality)
            jpeg_db.append(psnr(clean, damaged))
            model_db.append(psnr(clean, restore_array(model, damaged, jpeg=JpegFinding(ijg_scale(quality)))))
        out[f"jpeg {quality}"] = {"noisy": round(float(np.mean(jpeg_db)), 3), "model": round(float(np.mean(model_db)), 3)}
    return out


# measured at release for a model told the JPEG damage, those in the range of qualities it learnt
JPEG_QUALITIES = (10, 20, 40, 60, 75, 90)


def git_commit(repo: str = ".") -> str:
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run_record(state: dict) -> dict:
    """What a checkpoint says of the run that made it: data, wall minutes, epochs."""
    # a slim export keeps the history at the top; a Ray Train checkpoint keeps it in its progress
    history = state.get("history") or state.get("progress", {}).get("history", [])
    return {"train_data": state.get("train_config", {}).get("data", ""),
            # wall minutes of the run (validation included); runs from before elapsed_s was recorded: the
            # minutes inside the training loops
            "train_minutes": round((max((h.get("elapsed_s", 0.0) for h in history), default=0.0)
                                    or sum(h.get("epoch_s", 0.0) for h in history)) / 60, 1),
            "epochs": len(history)}


def _init_record(state: dict) -> dict:
    """For a fine-tune, the model it started from (``init``) and that model's record (``init_provenance``):
    a release's provenance, or for an unreleased checkpoint its training config and run, and its own
    ``init`` in turn, so every step down to the first release is on record."""
    init = state.get("train_config", {}).get("init", "")
    if not init:
        return {}
    parent = ckpt.load_state(init)[0]
    record = parent.get("provenance") or {"train_config": parent.get("train_config", {}), **_run_record(parent),
                                          **_init_record(parent)}
    return {"init": init, "init_provenance": record}


def package(trained: str, target: str, command: str, commit: str, test_data: str,
            sigmas: list[float] = (15.0, 25.0, 50.0), limit: int = 0) -> dict:
    """Write the slim checkpoint ``trained`` to ``target`` in fp16 with a provenance record, after
    measuring it on ``test_data`` (at each σ of Gaussian noise, or for a model told the JPEG damage at
    each of :data:`JPEG_QUALITIES` it learnt); returns the provenance."""
    state, _ = ckpt.load_state(trained)
    model = ckpt.model_from_state(state)
    channels = model.config.channels
    images = load_images(test_data, channels, limit=limit)
    # fp16 halves the size; measure what ships, the fp16 weights, not the fp32 ones.
    half = {k: v.to(torch.float16) for k, v in state["model"].items()}
    model.load_state_dict(half)
    lo, hi = model.jpeg_qualities
    provenance = {
        "command": command, "commit": commit, **_run_record(state), "test_data": test_data,
        "test_images": len(images),
        "psnr_db": (measure_jpeg(model, images, [q for q in JPEG_QUALITIES if lo <= q <= hi])
                    if model.config.jpeg_input else measure(model, images, list(sigmas))),
        "packaged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dtype": "float16",
    }
    provenance.update(_init_record(state))
    slim = {k: v for k, v in state.items() if k not in ("history", "optimizer", "progress")}
    slim["model"] = half
    slim["provenance"] = provenance
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = target + ".tmp"
    torch.save(slim, tmp)
    os.replace(tmp, target)
    return provenance
