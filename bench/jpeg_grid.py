"""How often `raeae.jpeg.estimate_jpeg` finds a decoded JPEG (saved again as PNG) and its quality and grid,
and how long it takes: half of BSD68 and half of CBSD68 (68 images), each cropped at a random grid offset
to a random side of 128-256 pixels, after each of ten damages (JPEG alone, noise then JPEG, and no JPEG).
To compare with another commit's search, run it with that commit's package first on the path:

    .venv/bin/python bench/jpeg_grid.py --test ../shared/data
    git worktree add /tmp/old 7885605 && PYTHONPATH=/tmp/old .venv/bin/python bench/jpeg_grid.py --test ../shared/data
"""

from __future__ import annotations

import argparse
import glob
import sys
import time

import numpy as np
from PIL import Image

import raeae.jpeg
from raeae.jpeg import compress, estimate_jpeg, ijg_scale

# name: (Gaussian σ before compression, JPEG quality or None)
CASES = {"q10": (0, 10), "q20": (0, 20), "q50": (0, 50), "q75": (0, 75), "σ15 q75": (15, 75), "σ30 q60": (30, 60),
         "σ5 q90": (5, 90), "clean": (0, None), "σ15": (15, None), "σ50": (50, None)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", default="../shared/data", help="folder holding bsd68/ and cbsd68/")
    a = p.parse_args(argv)
    rng = np.random.default_rng(1)
    files = sorted(glob.glob(f"{a.test}/cbsd68/*.png"))[::2] + sorted(glob.glob(f"{a.test}/bsd68/*.png"))[1::2]
    found = {name: [0, 0, 0] for name in CASES}  # found JPEG, right quality (±15 %) and grid, images
    seconds = 0.0
    for f in files:
        image = np.array(Image.open(f))
        for name, (sigma, quality) in CASES.items():
            x = image + rng.standard_normal(image.shape) * sigma if sigma else image
            x = np.clip(np.round(x), 0, 255).astype(np.uint8)
            damaged = compress(x, quality) if quality else x
            side, (oy, ox) = int(rng.integers(128, 257)), rng.integers(0, 8, 2)
            crop = damaged[oy:oy + side, ox:ox + side]
            t0 = time.perf_counter()
            result = estimate_jpeg(crop)
            seconds += time.perf_counter() - t0
            row = found[name]
            row[0] += result.scale > 0
            row[1] += bool(quality and result.scale > 0 and abs(result.scale - ijg_scale(quality)) < 0.15 * ijg_scale(quality)
                           and result.offset == ((-oy) % 8, (-ox) % 8))
            row[2] += 1
    print(f"raeae.jpeg from {raeae.jpeg.__file__}")
    print("| damage | found JPEG | right quality and grid |\n|---|---:|---:|")
    for name, (jpeg, right, n) in found.items():
        print(f"| {name} | {jpeg}/{n} | {right}/{n} |")
    print(f"\n{1000 * seconds / sum(r[2] for r in found.values()):.2f} ms an image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
