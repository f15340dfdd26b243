"""Restoration quality on the standard benchmark: train on Train400, evaluate on BSD68 at σ 15, 25, 50
(0-255 scale, seed 0), next to the noisy input, scikit-image's TV / wavelet / NL-means on the very same
noisy images, and the published numbers. Training runs through raeae's own Ray Train path with a
time budget per σ.

    .venv/bin/python bench/quality.py --train ../shared/data/train400 --test ../shared/data/bsd68 \\
        --sigmas 15,25,50 --minutes 10

Noisy images are clipped to [0, 255] and quantised to 8 bits (what an archive holds), so the noisy
PSNR is a little higher than the unclipped float noise of the published protocol.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _report import print_table, write_json

from raeae.corrupt import NoiseConfig
from raeae.evaluate import EvaluateConfig, evaluate
from raeae.model import ModelConfig
from raeae.train import TrainConfig, train

# Zhang et al., "Beyond a Gaussian Denoiser" (DnCNN), IEEE TIP 2017, Table II: BSD68 PSNR (dB).
PUBLISHED = {15: {"BM3D": 31.07, "MLP (Burger 2012)": None, "DnCNN-S": 31.73},
             25: {"BM3D": 28.57, "MLP (Burger 2012)": 28.96, "DnCNN-S": 29.23},
             50: {"BM3D": 25.62, "MLP (Burger 2012)": 26.03, "DnCNN-S": 26.23}}


def cpu_recipe() -> ModelConfig:
    """What trains best in ~10 CPU minutes (measured on 2 cores against wider/deeper variants): 13×13
    patches, one 1024-wide layer each side of a 512 latent, residual (the net predicts the noise)."""
    return ModelConfig(patch_size=13, hidden=(1024,), latent=512, decoder_hidden=(1024,), residual=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="clean training images, e.g. ../shared/data/train400")
    p.add_argument("--test", required=True, help="clean test images, e.g. ../shared/data/bsd68")
    p.add_argument("--sigmas", default="15,25,50", help="noise levels (0-255), comma separated")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per σ")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (each gets cores/workers CPUs)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam lr, cosine-decayed over the budget")
    p.add_argument("--stride", type=int, default=3, help="tile stride at evaluation (more overlap = better)")
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--out", default="runs/quality", help="models, evaluate.json and grids go here")
    a = p.parse_args(argv)
    import ray

    ray.init(log_to_driver=False)
    cpus = os.cpu_count() or 1
    rows = []
    for sigma in [float(s) for s in a.sigmas.split(",")]:
        noise = NoiseConfig(sigma=sigma)
        model_dir = f"{a.out}/sigma{sigma:g}"
        t0 = time.perf_counter()
        r = train(TrainConfig(data=a.train, output=model_dir, model=cpu_recipe(), noise=noise, epochs=10_000,
                              max_minutes=a.minutes, patience=0, lr=a.lr, cosine=True, augment=True,
                              workers=a.workers, cpus_per_worker=max(1.0, cpus / a.workers), val_fraction=0.02,
                              storage_path=f"{a.out}/ray", run_name=f"quality-s{sigma:g}-{time.time_ns()}"))
        train_min = (time.perf_counter() - t0) / 60
        ev = evaluate(EvaluateConfig(model=model_dir, data=a.test, noise=noise, seed=0, stride=a.stride,
                                     limit=a.limit, output=f"{model_dir}/evaluate"), printer=lambda s: None)
        rows.append({"sigma": sigma, "train_minutes": round(train_min, 2), "loop_minutes": round(r.loop_s / 60, 2),
                     "epochs": len(r.history), "images": ev["images"], "methods": ev["methods"],
                     "published": PUBLISHED.get(int(sigma), {})})
    names = list(rows[0]["methods"])
    print(f"\nBSD68 ({rows[0]['images']} images), PSNR dB / SSIM; raeae trained {a.minutes:g} min per σ on "
          f"{a.train} ({cpus} CPUs)\n")
    table = []
    for r in rows:
        cells = [f"{r['methods'][n]['psnr']:.2f} / {r['methods'][n]['ssim']:.3f}" for n in names]
        pub = " / ".join("-" if v is None else f"{v:.2f}" for v in r["published"].values()) or "-"
        table.append([f"{r['sigma']:g}", *cells, pub, f"{r['train_minutes']:.1f}"])
    print_table(["σ", *names, "published BM3D / MLP / DnCNN", "raeae train min"], table)
    write_json(f"{a.out}/quality.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
