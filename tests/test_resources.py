"""Bounded resources: restoring 10x more images holds no more memory, and the Ray object store holds
the write buffer, not the collection."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raeae import checkpoint as ckpt
from raeae.metrics import PeakMemory
from raeae.model import ModelConfig, build_model
from raeae.restore import RestoreConfig, object_store_stats, restore

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
    store = lambda: (object_store_stats() or {}).get("used_bytes")  # noqa: E731
    with PeakMemory(every_s=0.1, gauge=store) as mem:
        summary = restore(RestoreConfig(model=str(model), input=str(folder), output=str(out), file_mb=file_mb,
                                        batch_size=4))
    return summary, mem


def test_ten_times_the_images_holds_no_more_memory(ray_session, collections, tiny_model, tmp_path):
    file_mb = 1.0
    runs = {n: restore_measured(tiny_model, folder, tmp_path / f"out{n}", file_mb) for n, folder in collections.items()}
    for n, (summary, _) in runs.items():
        assert summary["rows"] == summary["ok"] == n
    (_, small), (big_summary, big) = runs[N], runs[10 * N]
    restored_bytes = pq.read_table(tmp_path / f"out{10 * N}")["image"].nbytes
    # The bound: peak PSS of every process on the machine grows by less than 20 %.
    assert big.peak_pss <= 1.2 * small.peak_pss, (small.peak_pss / 2**20, big.peak_pss / 2**20)
    # The sensitive check: the object store holds the write buffer (--file-mb plus blocks in flight),
    # never the collection. Before write tasks were given CPUs that fit beside the actors, every
    # restored row waited in the store until the last actor finished: the peak was the whole output.
    assert 0 < big.peak_gauge < 0.4 * restored_bytes, (big.peak_gauge / 2**20, restored_bytes / 2**20)
    assert big_summary["parquet_files"] < 10 * N / 4 / 2  # gathered into files, not one per 4-image block
    assert big_summary["spilled_bytes"] == 0
