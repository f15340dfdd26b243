"""Losing a worker node while restoring costs time, never rows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


# fused: the CPU default; staged: the GPU default (decode and encode tasks beside the model actors),
# run here on CPUs with --layout staged
@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_node_removed_during_restore_every_input_once_and_ok(tmp_path, trained_checkpoint, layout):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        Image.fromarray(rng.integers(0, 256, (160, 120), dtype=np.uint8)).save(src / f"{i:03d}.png")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "node_loss_run.py"), str(trained_checkpoint),
                           str(src), str(out), "120", layout], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, (proc.stdout[-2000:], proc.stderr[-4000:])
    result = json.loads(line[len("RESULT "):])
    assert result["removed"], "the node was not removed during the run"
    assert result["removed"]["files_written_before"] < 10, result["removed"]  # of 30 blocks: mid-run
    raw = pq.read_table(out)  # every Parquet file as written, no de-duplication
    paths = raw["path"].to_pylist()
    assert len(paths) == 60 and len(set(paths)) == 60
    assert set(raw["status"].to_pylist()) == {"ok"}
