"""16-bit sources: what restoring at 16 bits keeps against restoring the 8-bit reading of the same file.

Each clean test image (8-bit, scaled to 16 bits: x 257) gets Gaussian noise of σ (in 8-bit units)
drawn at 16 bits, is written as a 16-bit PNG (48-bit for colour), and is restored twice with the same
model through the code a restore runs: ``decode_image`` (16 bits kept) -> ``raeae.restore_image`` ->
uint16, and the top 8 bits of the same file (what a reader limited to 8 bits gets) -> restore ->
scaled back to 16 bits. PSNR against the clean image at 16 bits (peak 65535).

    .venv/bin/python bench/deep.py --test ../shared/data/cbsd68 --model builtin:color
    .venv/bin/python bench/deep.py --test ../shared/data/bsd68 --model builtin:gray
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _report import print_table, write_json

import raeae
from raeae.images import decode, decode_image, encode_png
from raeae.storage import list_images


def psnr16(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(65535.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def measure(model, clean8: np.ndarray, sigma: float, seed: int) -> tuple[float, float, float]:
    """(noisy, restored at 16 bits, restored from the 8-bit reading) PSNR dB of one image."""
    clean = clean8.astype(np.uint16) * 257
    noise = np.random.default_rng(seed).normal(0.0, sigma * 257, clean.shape)
    noisy = np.clip(clean + noise + 0.5, 0, 65535).astype(np.uint16)
    deep, mode, _ = decode_image(encode_png(noisy))  # the 16-bit file as a restore reads it
    assert deep.dtype == np.uint16 and np.array_equal(deep, noisy), mode
    at16 = raeae.restore_image(model, deep)
    at8 = raeae.restore_image(model, (deep >> 8).astype(np.uint8)).astype(np.uint16) * 257
    return psnr16(noisy, clean), psnr16(at16, clean), psnr16(at8, clean)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", required=True, help="folder of clean 8-bit test images (e.g. ../shared/data/cbsd68)")
    p.add_argument("--model", default="builtin:auto", help="checkpoint or builtin:NAME restoring every image")
    p.add_argument("--sigma", type=float, default=25.0, help="noise σ in 8-bit units, drawn at 16 bits")
    p.add_argument("--limit", type=int, default=0, help="first N test images only (0 = all)")
    p.add_argument("--json", default="runs/bench-deep.json")
    a = p.parse_args(argv)
    from raeae import checkpoint as ckpt
    from raeae.inference import pick_model

    models = [ckpt.model_from_state(ckpt.parse(b)) for b in ckpt.read_models(a.model)]
    files = list_images(a.test)[: a.limit or None]
    scores = []
    for i, f in enumerate(files):
        clean8 = decode(Path(f["path"]).read_bytes())[0]
        scores.append(measure(pick_model(models, clean8), clean8, a.sigma, seed=i))
    noisy, at16, at8 = np.mean(scores, axis=0)
    print_table(["images", "σ", "noisy dB", "restored at 16 bits dB", "restored from the 8-bit reading dB"],
                [[str(len(scores)), f"{a.sigma:g}", f"{noisy:.2f}", f"{at16:.2f}", f"{at8:.2f}"]], right={0, 1, 2, 3, 4})
    print(f"\nmodel {a.model}; test images {a.test}; PSNR at 16 bits (peak 65535) against the clean image x 257")
    write_json(a.json, {"test": a.test, "model": a.model, "sigma": a.sigma, "images": len(scores),
                        "noisy_db": noisy, "restored_16_db": at16, "restored_8_db": at8})
    return 0


if __name__ == "__main__":
    sys.exit(main())
