"""Restore throughput: a plain single-process loop vs the Ray Data pipeline, same files, same work
(read -> decode -> tile -> model -> stitch -> PNG encode -> Parquet), measured in one run, at 1x and
4x collection sizes; with the peak memory (PSS) summed over all processes and the Ray object store's
peak. Each setup runs in a fresh process of its own (Ray Data on a fresh local Ray), as a user runs it.

    .venv/bin/python bench/restore.py --images 5000 --scales 1,4 [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from _report import print_table, write_json

from raeae import checkpoint as ckpt
from raeae.corrupt import NoiseConfig
from raeae.data import SAMPLE_TRAIN, sample_dir
from raeae.evaluate import make_noisy
from raeae.images import decode
from raeae.metrics import PeakMemory
from raeae.model import build_model, photo_config
from raeae.restore import Restorer, RestoreConfig, object_store_used, restore
from raeae.storage import StorageConfig, list_images


def make_collection(folder: str, n: int, seed: int = 0) -> None:
    """n noisy PNG crops of the sample photographs: 90 % small (64-128 px), 10 % large (256-512 px)."""
    rng = np.random.default_rng(seed)
    photos = [decode((sample_dir() / s).read_bytes())[0] for s in SAMPLE_TRAIN]
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(rng.integers(256, 513)) if i % 10 == 0 else int(rng.integers(64, 129))
        h, w = min(side, img.shape[0]), min(side, img.shape[1])
        y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
        Image.fromarray(make_noisy(img[y:y + h, x:x + w], NoiseConfig(sigma=25), i)).save(
            f"{folder}/{i:06d}.png", compress_level=1)


def plain(model_path: str, folder: str, out: str) -> dict:
    """The same Restorer code, called on one batch after another in this process."""
    files = list_images(folder)
    d = RestoreConfig()  # the defaults `raeae restore` runs with
    r = Restorer(model_path, ckpt.model_id(ckpt.read_checkpoint_bytes(model_path)), StorageConfig(), d.stride,
                 d.tile_batch, d.max_pixels, d.png_level, torch.get_num_threads(), folder, blend=d.blend,
                 ensemble=d.ensemble)
    t0 = time.perf_counter()
    tables = []
    os.makedirs(out, exist_ok=True)
    for i in range(0, len(files), d.batch_size):
        chunk = files[i:i + d.batch_size]
        tables.append(r({"path": [f["path"] for f in chunk], "size": [f["size"] for f in chunk],
                         "mtime": [f["mtime"] for f in chunk]}))
        if sum(t.nbytes for t in tables) >= d.file_mb * 2**20:  # same files as Ray Data
            pq.write_table(pa.concat_tables(tables), f"{out}/part-{i:06d}.parquet")
            tables = []
    if tables:
        pq.write_table(pa.concat_tables(tables), f"{out}/part-last.parquet")
    wall = time.perf_counter() - t0
    pixels = sum(w * h for w, h in zip(*[pq.read_table(out, columns=["width", "height"])[c].to_pylist()
                                          for c in ("width", "height")]) if w)
    return {"images_per_s": len(files) / wall, "megapixels_per_s": pixels / 1e6 / wall, "wall_s": wall}


def ray_data(model_path: str, folder: str, out: str) -> dict:
    """The Ray Data pipeline (`raeae restore`) on a fresh local Ray, as a user runs it."""
    import ray

    ray.init(log_to_driver=False)
    with PeakMemory(every_s=1.0, gauge=object_store_used, pss=False) as mem:
        s = restore(RestoreConfig(model=model_path, input=folder, output=out))
    return {"images_per_s": s["images_per_s"], "megapixels_per_s": s["megapixels_per_s"], "wall_s": s["wall_s"],
            "peak_object_store_mib": mem.peak_gauge / 2**20}


def measure(setup: str, model_path: str, folder: str, out: str) -> dict:
    """Run one setup in its own process (nothing left over from the other), sampling the PSS of every
    process on the machine from here once a second (a sample costs ~50 ms of CPU)."""
    result = out + ".json"
    cmd = [sys.executable, __file__, "--one", setup, "--model", model_path, "--folder", folder, "--out", out,
           "--json", result]
    with PeakMemory(every_s=1.0) as mem:
        subprocess.run(cmd, check=True)
    with open(result) as f:
        r = json.load(f)
    return {"peak_object_store_mib": 0.0, **r, "peak_pss_gib": mem.peak_pss / 2**30}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000, help="images at scale 1")
    p.add_argument("--scales", default="1,4", help="collection sizes as multiples of --images")
    p.add_argument("--model", default="", help="checkpoint (default: an untrained demo-sized model; speed "
                                               "does not depend on the weights)")
    p.add_argument("--workdir", default="", help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default="runs/bench-restore.json")
    p.add_argument("--one", choices=("plain", "ray"), help=argparse.SUPPRESS)  # one measured setup (child)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        r = (plain if a.one == "plain" else ray_data)(a.model, a.folder, a.out)
        with open(a.json, "w") as f:
            json.dump(r, f)
        return 0

    work = a.workdir or tempfile.mkdtemp(prefix="raeae-bench-")
    model_path = a.model
    if not model_path:
        cfg = photo_config()  # the shipped photo recipe's network (an untrained copy: speed only)
        model_path = f"{work}/model"
        ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg), model_path)
    rows = []
    for scale in [float(s) for s in a.scales.split(",")]:
        n = int(a.images * scale)
        folder = f"{work}/images-{n}"
        if not os.path.isdir(folder):
            make_collection(folder, n)
        for setup, name in (("plain", "plain loop"), ("ray", "Ray Data")):
            out = f"{work}/out-{name.replace(' ', '-')}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"images": n, "setup": name, **measure(setup, model_path, folder, out)})
    print()
    table = []
    for r in rows:
        base = next(x for x in rows if x["images"] == r["images"] and x["setup"] == "plain loop")
        table.append([str(r["images"]), r["setup"], f"{r['images_per_s']:.1f}", f"{r['megapixels_per_s']:.2f}",
                      f"{r['images_per_s'] / base['images_per_s']:.2f}", f"{r['wall_s']:.1f}",
                      f"{r['peak_pss_gib']:.2f}", f"{r['peak_object_store_mib']:.0f}"])
    print_table(["images", "setup", "images/s", "MP/s", "ratio to plain", "wall s", "peak PSS GiB (all processes)",
                 "peak object store MiB"], table, right={0, 2, 3, 4, 5, 6, 7})
    write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
