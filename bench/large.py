"""Archival scans of any size: `raeae restore` (as shipped, in a process of its own) on single large scans
and on a folder of several large scans beside many small images, with the wall time and the peak
memory of every process on the machine (Ray's workers and object store included: summed PSS, sampled
once a second, minus what the machine held before the run), and what Ray spilled to disk.

Scans are made from the embedded sample photographs, tiled to size, with Gaussian noise σ=10 (a
scanner's grain): 12000×8000 8-bit gray PNG and 16-bit colour TIFF (96 MP), 20000×15000 8-bit RGB PNG
(300 MP), and four 96 MP gray PNGs beside 1,000 small images.

    .venv/bin/python bench/large.py --cases gray96,rgb16-96,rgb300,mixed --out runs/large
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from _report import print_table, write_json
from PIL import Image

from raeae.data import sample_dir
from raeae.images import decode
from raeae.metrics import PeakMemory


def scan(height: int, width: int, colour: bool, seed: int, sixteen: bool = False) -> np.ndarray:
    """A noisy scan of the given size: a sample photograph tiled (mirrored, so no seams) plus grain."""
    tile = decode((sample_dir() / ("astronaut.png" if colour else "camera.png")).read_bytes())[0]
    tile = np.concatenate([tile, tile[::-1]], axis=0)
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1])) + ((1,) if colour else ())
    image = np.tile(tile, reps)[:height, :width]
    rng = np.random.default_rng(seed)
    out = np.empty(image.shape, np.uint16 if sixteen else np.uint8)
    for y in range(0, height, 1000):  # in bands: a 300 MP float copy would be 7 GB
        band = image[y:y + 1000].astype(np.float32) + rng.normal(0, 10, image[y:y + 1000].shape).astype(np.float32)
        top = 65535.0 if sixteen else 255.0
        out[y:y + 1000] = np.clip(band * (257.0 if sixteen else 1.0), 0, top).round()
    return out


def write_case(case: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    if case == "gray96":
        Image.fromarray(scan(8000, 12000, False, 0)).save(f"{folder}/scan.png", compress_level=1)
    elif case == "rgb16-96":
        import tifffile

        tifffile.imwrite(f"{folder}/scan.tif", scan(8000, 12000, True, 1, sixteen=True))
    elif case == "rgb300":
        Image.fromarray(scan(15000, 20000, True, 2)).save(f"{folder}/scan.png", compress_level=1)
    elif case == "mixed":
        for i in range(4):
            Image.fromarray(scan(8000, 12000, False, 10 + i)).save(f"{folder}/scan{i}.png", compress_level=1)
        small = scan(640, 640, True, 20)
        for i in range(1000):
            y, x = (i * 37) % 576, (i * 53) % 576
            Image.fromarray(small[y:y + 64, x:x + 64]).save(f"{folder}/small{i:04d}.png")
    else:
        raise SystemExit(f"unknown case {case}")


def run(folder: str, out: str, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    before = PeakMemory.total_pss()
    t0 = time.perf_counter()
    with PeakMemory(every_s=1.0) as mem:
        r = subprocess.run([sys.executable, "-m", "raeae.cli", "restore", "--input", folder, "--output", out, *extra],
                           capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"raeae restore failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    summary = json.load(open(f"{out}/_summary.json"))
    return {"wall_s": wall, "peak_gib": mem.peak_pss / 2**30, "added_gib": (mem.peak_pss - before) / 2**30,
            "ok": summary["ok"], "errors": summary["errors"], "megapixels": summary["megapixels"],
            "spilled_bytes": summary.get("spilled_bytes"), "restore_wall_s": summary["wall_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="gray96,rgb16-96,rgb300,mixed")
    p.add_argument("--out", default="runs/large")
    p.add_argument("--flags", default="", help="extra `raeae restore` flags, e.g. '--max-pixels 400000000'")
    a = p.parse_args(argv)
    results = {}
    for case in [c for c in a.cases.split(",") if c]:
        folder = f"{a.out}/{case}"
        if not os.path.isdir(folder):
            write_case(case, folder)
        results[case] = run(folder, f"{a.out}/{case}-restored", a.flags.split())
        print(case, results[case], flush=True)
    print()
    print_table(["case", "rows ok / errors", "MP", "wall s", "MP/s", "peak GiB (all processes)", "added GiB", "spilled"],
                [[c, f"{r['ok']} / {r['errors']}", f"{r['megapixels']:.0f}", f"{r['wall_s']:.0f}",
                  f"{r['megapixels'] / r['restore_wall_s']:.2f}", f"{r['peak_gib']:.2f}", f"{r['added_gib']:.2f}",
                  str(r["spilled_bytes"])] for c, r in results.items()])
    write_json(f"{a.out}/large.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
