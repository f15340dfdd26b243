"""Quality on the damage archives really hold: each clean test image damaged several ways (salt-and-pepper,
JPEG saved as .jpg and re-saved as PNG, noise then JPEG, shot noise, Gaussian noise), all the files in
one folder, restored by ``raeae.restore`` exactly as ``raeae restore --input DIR --output OUT`` runs it
(no flags: each row's damage is found per image), and scored next to the damaged input and classical
methods on the very same files: TV (Chambolle, at scikit-image's σ estimate), a 3×3 median, a 5×5
switching median (only pixels at 0 or 255 replaced) and, on the first ``--bm3d-images`` of each set,
BM3D (the PyPI ``bm3d`` package, where installed; at the true σ for Gaussian noise, as it is
benchmarked, else at scikit-image's estimate). Also: what damage each row was found to have, against
what was done to it.

    .venv/bin/python bench/damage.py --test ../shared/data/bsd68 --test-color ../shared/data/cbsd68 --out runs/damage
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from _report import print_table, write_json
from PIL import Image

import raeae
from raeae import read_restored
from raeae.data import load_images
from raeae.images import decode
from raeae.metrics import psnr, ssim


def _gaussian(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).round().astype(np.uint8)


def _salt_pepper(clean: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(clean.shape) < amount  # each value on its own, as scikit-image's random_noise does
    return np.where(hit, np.where(rng.random(clean.shape) < 0.5, 0, 255), clean).astype(np.uint8)


def _poisson(clean: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.poisson(clean / 255.0 * peak) / peak * 255.0, 0, 255).round().astype(np.uint8)


def _save(image: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    return _save(image, "JPEG", quality=quality)


def _decoded_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_jpeg(image, quality))))


@dataclass(frozen=True)
class Damage:
    """One way of damaging a clean image: a file's bytes and extension, and the kind restore should find."""

    name: str
    slug: str
    expected: str  # the kind a row should report (raeae.damage.Kind's value)
    make: Callable[[np.ndarray, np.random.Generator], bytes]
    ext: str = "png"
    sigma: float | None = None  # the true σ of Gaussian noise, for BM3D as it is benchmarked
    bm3d: bool = False


DAMAGES = [
    Damage("salt-and-pepper 5 %", "sp5", "impulse", lambda c, r: _save(_salt_pepper(c, 0.05, r), "PNG")),
    Damage("JPEG quality 20 (.jpg)", "jpeg20", "jpeg", lambda c, r: _jpeg(c, 20), "jpg"),
    Damage("JPEG quality 20, re-saved as PNG", "jpeg20png", "jpeg",
           lambda c, r: _save(_decoded_jpeg(c, 20), "PNG")),
    Damage("JPEG quality 40 (.jpg)", "jpeg40", "jpeg", lambda c, r: _jpeg(c, 40), "jpg"),
    Damage("Gaussian σ 15, then JPEG quality 75 (.jpg)", "g15jpeg75", "jpeg",
           lambda c, r: _jpeg(_gaussian(c, 15, r), 75), "jpg", bm3d=True),
    Damage("Poisson shot noise, peak 30", "poisson30", "noise", lambda c, r: _save(_poisson(c, 30, r), "PNG")),
    Damage("Gaussian σ 15", "g15", "noise", lambda c, r: _save(_gaussian(c, 15, r), "PNG"), sigma=15, bm3d=True),
    Damage("Gaussian σ 25", "g25", "noise", lambda c, r: _save(_gaussian(c, 25, r), "PNG"), sigma=25, bm3d=True),
    Damage("Gaussian σ 50", "g50", "noise", lambda c, r: _save(_gaussian(c, 50, r), "PNG"), sigma=50, bm3d=True),
]


def classical(damaged: np.ndarray) -> dict[str, np.ndarray]:
    """The classical methods' restorations of one damaged uint8 image."""
    from scipy.ndimage import median_filter
    from skimage.restoration import denoise_tv_chambolle, estimate_sigma

    axis = 2 if damaged.ndim == 3 else None
    x = damaged.astype(np.float64) / 255.0
    sigma = float(np.mean(estimate_sigma(x, channel_axis=axis)))
    size = 3 if axis is None else (3, 3, 1)
    m5 = median_filter(damaged, size=5 if axis is None else (5, 5, 1))
    tv = denoise_tv_chambolle(x, weight=0.9 * sigma, channel_axis=axis)
    return {"TV": np.clip(tv * 255 + 0.5, 0, 255).astype(np.uint8),
            "3×3 median": median_filter(damaged, size=size),
            "switching median": np.where((damaged == 0) | (damaged == 255), m5, damaged)}


def bm3d_restore(damaged: np.ndarray, sigma: float | None) -> np.ndarray | None:
    try:
        import bm3d
    except ImportError:
        return None
    from skimage.restoration import estimate_sigma

    x = damaged.astype(np.float64) / 255.0
    s = sigma / 255.0 if sigma is not None else float(np.mean(estimate_sigma(x, channel_axis=2 if x.ndim == 3 else None)))
    out = bm3d.bm3d_rgb(x, s) if x.ndim == 3 else bm3d.bm3d(x, s)
    return np.clip(np.asarray(out) * 255 + 0.5, 0, 255).astype(np.uint8)


def write_archive(sets: dict[str, list[tuple[str, np.ndarray]]], folder: str) -> dict[str, tuple[str, str, Damage]]:
    """Every damaged file into ``folder``; returns file name -> (set, clean image name, damage)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    index = {}
    for set_name, images in sets.items():
        for k, damage in enumerate(DAMAGES):
            for i, (name, clean) in enumerate(images):
                rng = np.random.default_rng(1000 * k + i)
                stem = os.path.splitext(name)[0]
                file = f"{set_name}-{damage.slug}-{stem}.{damage.ext}"
                with open(os.path.join(folder, file), "wb") as f:
                    f.write(damage.make(clean, rng))
                index[file] = (set_name, name, damage)
    return index


def score(index, sets, folder: str, rows: dict, bm3d_images: int) -> dict:
    """Per set and damage: mean PSNR/SSIM of every method, and the detected kinds."""
    clean_of = {(s, n): c for s, images in sets.items() for n, c in images}
    first = {s: {n for n, _ in images[:bm3d_images]} for s, images in sets.items()}
    results: dict = {}
    for file, (set_name, name, damage) in index.items():
        clean = clean_of[(set_name, name)]
        damaged = decode(open(os.path.join(folder, file), "rb").read())[0]
        row = rows[file]
        r = results.setdefault(set_name, {}).setdefault(damage.slug, {"name": damage.name, "expected": damage.expected,
                                                                     "methods": {}, "found": {}, "quality": []})
        found = row["damage"] or f"error: {row['error']}"
        r["found"][found] = r["found"].get(found, 0) + 1
        if row["jpeg_quality"] is not None:
            r["quality"].append(row["jpeg_quality"])
        outputs = {"input": damaged, **classical(damaged), "raeae": decode(row["image"])[0]}
        if damage.bm3d and name in first[set_name]:
            b = bm3d_restore(damaged, damage.sigma)
            if b is not None:
                outputs["BM3D (first images)"] = b
                outputs["raeae (same images)"] = outputs["raeae"]
        for method, out in outputs.items():
            m = r["methods"].setdefault(method, {"psnr": [], "ssim": []})
            m["psnr"].append(psnr(clean, out))
            m["ssim"].append(ssim(clean, out))
    for per_set in results.values():
        for r in per_set.values():
            for m in r["methods"].values():
                m["images"] = len(m["psnr"])
                m["psnr"], m["ssim"] = float(np.mean(m["psnr"])), float(np.mean(m["ssim"]))
    return results


def print_results(results: dict, seconds: float, rows: int) -> None:
    methods = ["input", "TV", "3×3 median", "switching median", "BM3D (first images)", "raeae (same images)", "raeae"]
    for set_name, per_set in results.items():
        print(f"\n{set_name}: PSNR dB / SSIM (raeae restore, no flags)\n")
        table = []
        for r in per_set.values():
            cells = [f"{r['methods'][m]['psnr']:.2f} / {r['methods'][m]['ssim']:.3f}" if m in r["methods"] else "-"
                     for m in methods]
            table.append([r["name"], *cells])
        print_table(["damage", *methods], table)
        print(f"\n{set_name}: damage found per row\n")
        found = []
        for r in per_set.values():
            n = sum(r["found"].values())
            right = r["found"].get(r["expected"], 0)
            q = f"{np.median(r['quality']):.0f}" if r["quality"] else "-"
            found.append([r["name"], r["expected"], ", ".join(f"{k} {v}" for k, v in sorted(r["found"].items())),
                          f"{right}/{n} ({100 * right / n:.0f} %)", q])
        print_table(["damage", "expected", "found", "right", "median JPEG quality found"], found)
    print(f"\nrestore: {rows} files in {seconds:.0f} s (one raeae restore run over the whole folder, Ray start included)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", default="", help="clean gray test images, e.g. ../shared/data/bsd68")
    p.add_argument("--test-color", default="", help="clean colour test images, e.g. ../shared/data/cbsd68")
    p.add_argument("--limit", type=int, default=0, help="the first N images of each set (0 = all)")
    p.add_argument("--bm3d-images", type=int, default=8, help="BM3D on the first N images of each set (slow: "
                                                              "~5 s a gray and ~12 s a colour image on 2 CPUs)")
    p.add_argument("--out", default="runs/damage", help="the damaged archive, the restored output and JSON go here")
    a = p.parse_args(argv)
    sets = {}
    if a.test:
        sets[os.path.basename(a.test.rstrip("/"))] = load_images(a.test, channels=1, limit=a.limit)
    if a.test_color:
        sets[os.path.basename(a.test_color.rstrip("/"))] = load_images(a.test_color, channels=3, limit=a.limit)
    if not sets:
        p.error("give --test and/or --test-color")
    archive, restored = f"{a.out}/archive", f"{a.out}/restored"
    index = write_archive(sets, archive)
    shutil.rmtree(restored, ignore_errors=True)
    t0 = time.perf_counter()
    raeae.restore(input=archive, output=restored)  # what `raeae restore --input A --output O` runs, no flags
    seconds = time.perf_counter() - t0
    rows = {os.path.basename(r["path"]): r for r in read_restored(restored).to_pylist()}
    results = score(index, sets, archive, rows, a.bm3d_images)
    print_results(results, seconds, len(rows))
    write_json(f"{a.out}/damage.json", {"results": results, "restore_s": seconds, "files": len(rows)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
