"""Restore-time levers for a model on a test set at one σ: tile blending, stride, ×8 self-ensemble.

    .venv/bin/python bench/levers.py --model builtin:gray --test ../shared/data/bsd68 --sigma 25
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import raeae
from raeae.corrupt import NoiseConfig
from raeae.data import load_images
from raeae.evaluate import make_noisy
from raeae.inference import restore_array
from raeae.metrics import psnr
from raeae.patches import Blend

SETTINGS = [("flat s6", dict(stride=6, blend=Blend.FLAT)), ("gaussian s6", dict(stride=6)),
            ("flat s3", dict(stride=3, blend=Blend.FLAT)), ("gaussian s3", dict(stride=3)),
            ("flat s6 ensemble", dict(stride=6, blend=Blend.FLAT, ensemble=True)),
            ("gaussian s4", dict(stride=4)), ("gaussian s6 ensemble", dict(stride=6, ensemble=True)),
            ("gaussian s3 ensemble", dict(stride=3, ensemble=True))]  # 32x the default's work


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:gray", help="model to restore with")
    p.add_argument("--test", required=True, help="clean test images, e.g. ../shared/data/bsd68")
    p.add_argument("--sigma", type=float, default=25.0, help="Gaussian σ (0-255), seed 0 protocol")
    p.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    a = p.parse_args(argv)
    model = raeae.load_model(a.model)
    images = load_images(a.test, model.config.channels if model.config.channels == 3 else 1, limit=a.limit)
    noisy = [make_noisy(c, NoiseConfig(sigma=a.sigma), i) for i, (_, c) in enumerate(images)]
    print("| restore setting | PSNR (dB) | seconds |\n|---|---:|---:|")
    for name, kw in SETTINGS:
        t0 = time.perf_counter()
        value = np.mean([psnr(c, restore_array(model, n, **kw)) for (_, c), n in zip(images, noisy)])
        print(f"| {name} | {value:.3f} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
