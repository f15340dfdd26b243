"""Bounded resources: restoring 10x more images holds no more memory, the Ray object store holds the
write buffer, not the collection, and spilling is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raeae import checkpoint as ckpt
from raeae.metrics import PeakMemory
from raeae.model import ModelConfig, build_model
from raeae.restoring import RestoreConfig, object_store_used, restore

from conftest import png_bytes

pytestmark = pytest.mark.slow

N = 100  # the 1x collection; 10x is 1,000 files
SIDE = 256  # RGB noise: a ~200 kB PNG in, ~200 kB out, so 10x is ~130 MB of restored rows


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> dict[int, Path]:
    """N and 10 N distinct files (10 N are hard links of the N encoded images, under distinct names)."""
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("encoded")
    sources = []
    for i in range(N):
        p = base / f"{i:03d}.png"
        p.write_bytes(png_bytes(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8), compress_level=1))
        sources.append(p)
    out = {}
    for n in (N, 10 * N):
        d = tmp_path_factory.mktemp(f"collection{n}")
        for i in range(n):
            os.link(sources[i % N], d / f"{i:04d}.png")
        out[n] = d
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained RGB model: resources do not depend on the weights, and a small one keeps this fast."""
    cfg = ModelConfig(patch_size=4, channels=3, hidden=(32,), latent=16, decoder_hidden=(32,))
    d = tmp_path_factory.mktemp("tiny")
    ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg, inference={"stride": 4}), str(d))
    return d


def restore_measured(model: Path, folder: Path, out: Path, file_mb: float) -> tuple[dict, PeakMemory]:
    with PeakMemory(every_s=0.5, gauge=object_store_used) as mem:
        summary = restore(RestoreConfig(model=str(model), input=str(folder), output=str(out), file_mb=file_mb,
                                        batch_size=4))
    return summary, mem


def test_ten_times_the_images_holds_no_more_memory(ray_session, collections, tiny_model, tmp_path):
    file_mb = 1.0
    runs = {n: restore_measured(tiny_model, folder, tmp_path / f"out{n}", file_mb) for n, folder in collections.items()}
    for n, (summary, _) in runs.items():
        assert summary["rows"] == summary["ok"] == n
    (_, small), (big_summary, big) = runs[N], runs[10 * N]
    table = pq.read_table(tmp_path / f"out{10 * N}")
    restored_bytes = table["image"].nbytes
    # The bound: peak PSS of every process on the machine grows by less than 20 %.
    assert big.peak_pss <= 1.2 * small.peak_pss, (small.peak_pss / 2**20, big.peak_pss / 2**20)
    # The sensitive check: the object store holds the write buffer (--file-mb plus blocks in flight),
    # never the collection. Before write tasks were given CPUs that fit beside the actors, every
    # restored row waited in the store until the last actor finished: the peak was the whole output.
    print(f"object store peak: {small.peak_gauge / 2**20:.0f} MiB at {N} images, {big.peak_gauge / 2**20:.0f} MiB "
          f"at {10 * N} ({restored_bytes / 2**20:.0f} MiB restored)")
    assert 0 < big.peak_gauge < 0.4 * restored_bytes, (big.peak_gauge / 2**20, restored_bytes / 2**20)
    # ... and stays inside the pipeline's own budget (4 files' worth at --file-mb 1, at least 64 MiB),
    # which does not depend on how many images there are
    assert big.peak_gauge <= 64 * 2**20
    # Gathered into files of at least --file-mb (but the last), not one file per 4-image block.
    assert big_summary["parquet_files"] <= table.nbytes / (file_mb * 2**20) + 1 < 10 * N / 4
    assert big_summary["spilled_bytes"] == 0


SMALL_STORE_RUN = """
import sys, numpy as np, ray
from raeae.restoring import RestoreConfig, restore, spilled_bytes
ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
s = restore(RestoreConfig(model=sys.argv[1], input=sys.argv[2], output=sys.argv[3], file_mb=1000, batch_size=4))
assert s["rows"] == s["ok"] == int(sys.argv[4]) and s["spilled_bytes"] is not None, s
held = [ray.put(np.ones(30 * 2**20, dtype=np.uint8)) for _ in range(5)]  # 150 MB pinned in an 80 MB store
assert spilled_bytes() > 0
print("spilled", spilled_bytes())
"""


def test_small_object_store_neither_hangs_nor_spills_silently(collections, tiny_model, tmp_path):
    """On an 80 MB object store, --file-mb 1000 is capped (Ray Data stops the actors when its share of
    the store is full, and a writer waiting for 1000 MB of rows would wait forever) and the run ends
    with every row; and the spill counter that restore reports reads real spilling."""
    n = 10 * N
    r = subprocess.run([sys.executable, "-c", SMALL_STORE_RUN, str(tiny_model), str(collections[n]),
                        str(tmp_path / "out"), str(n)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Parquet files gather 10 MB, not --file-mb 1000" in r.stdout
    assert "spilled " in r.stdout
