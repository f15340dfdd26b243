"""Smoke runs of the bench scripts at toy sizes: each runs from the command line, prints its table and
writes its JSON. Their numbers are not checked here; speed is measured by running the benchmarks, never
in tests. The scripts join the session's Ray through RAY_ADDRESS (a fresh Ray costs ~10 s each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from raeae.data import copy_samples

from conftest import ROOT
from test_data import write_mnist

pytestmark = pytest.mark.slow


def run_bench(ray_session, script: str, *args: str) -> str:
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_bench_restore(ray_session, tmp_path):
    # the smallest scale that keeps the case's two parts: each setup runs once timed and once for its
    # memory (the startup case: below, with the warm setup)
    out = run_bench(ray_session, "restore.py", "--cases", "mixed", "--scale", "0.0001", "--repeats", "1",
                    "--model", "builtin:gray", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert "| case | images | setup | plain loop s | setup s |" in out
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["case"], r["images"]) for r in rows] == [("mixed", 2)]
    for r in rows:
        assert r["plain"]["rows"] == r["raeae"]["rows"] == r["images"]
        assert 0 < r["raeae"]["forward_s"] <= r["raeae"]["restore_s"] and r["raeae"]["first_row_s"] > 0
        assert r["plain"]["peak_pss_gib"] > 0 and r["raeae"]["peak_pss_gib"] > 0  # from the untimed runs
        assert all("peak_pss_gib" not in run for setup in ("plain", "raeae") for run in r["runs"][setup])


def test_bench_restore_on_a_running_head(ray_session, tmp_path):
    """The ``warm`` setup starts a `ray start --head` of its own for each run, joins it and stops it."""
    out = run_bench(ray_session, "restore.py", "--cases", "startup", "--scale", "0.0001", "--repeats", "1",
                    "--setups", "plain,warm", "--model", "builtin:gray", "--workdir", str(tmp_path),
                    "--json", str(tmp_path / "w.json"))
    assert "| startup 1 | 1 | warm |" in out
    (row,) = json.loads((tmp_path / "w.json").read_text())
    assert row["warm"]["rows"] == 1 and row["warm"]["first_row_s"] > 0 and row["warm"]["peak_pss_gib"] > 0


def test_bench_train(ray_session, tmp_path):
    (tmp_path / "mnist").mkdir()
    write_mnist(tmp_path / "mnist", n=256, size=28)
    out = run_bench(ray_session, "train.py", "--data", str(tmp_path / "mnist"), "--epochs", "1", "--batch-size", "64",
                    "--repeats", "1",
                    "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "t.json"))
    assert "| setup | loop samples/s |" in out
    rows = json.loads((tmp_path / "t.json").read_text())
    assert len(rows) == 3 and all(r["samples_per_s"] > 0 for r in rows.values())


def crop_samples(dest, names: tuple[str, ...], side: int = 128) -> None:
    """Centre crops of embedded sample photographs: the smoke run scores every method on each test
    image, and scikit-image's NL-means and TV on full-size photographs took most of its time."""
    for path in copy_samples(dest, names):
        image = Image.open(path)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image.crop((left, top, left + side, top + side)).save(path)  # the same format (rocket.jpg stays JPEG)


def test_bench_quality(ray_session, tmp_path):
    crop_samples(tmp_path / "train", ("camera.png", "coins.png"))
    crop_samples(tmp_path / "test", ("moon.png",))
    crop_samples(tmp_path / "test_color", ("chelsea.png",))
    crop_samples(tmp_path / "train_color", ("astronaut.png", "coffee.png", "rocket.jpg"))
    out = run_bench(ray_session, "quality.py", "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"),
                    "--test-color", str(tmp_path / "test_color"), "--sigmas", "25", "--minutes", "0.05", "--blind",
                    "--self-supervised-minutes", "0.05", "--train-color", str(tmp_path / "train_color"),
                    "--color-archive-images", "2", "--out", str(tmp_path / "q"))
    assert "| σ |" in out and "| 25 |" in out
    rows = json.loads((tmp_path / "q" / "quality.json").read_text())
    gray = rows["gray"][0]["methods"]
    assert rows["gray"][0]["sigma"] == 25 and gray["fresh 0.05 min"]["psnr"] > 0
    assert gray["fresh blind 0.05 min"]["psnr"] > 0  # --blind: one σ 0-55 model beside the σ-specific one
    assert {"builtin:gray", "noisy input", "TV (Chambolle)", "NL-means"} <= set(gray)
    assert {"builtin:gray per channel", "TV (Chambolle)"} <= set(rows["color"][0]["methods"])
    ss = rows["self_supervised"]
    assert ss["archive"]["images"] == 2 and {"raeae", "TV (Chambolle)"} <= set(ss["archive"]["methods"])
    assert "self-supervised" in ss["test"]["methods"] and "| raeae self-supervised |" in out
    colour = rows["self_supervised_color"]  # the first 2 colour images are the archive; a colour model by itself
    assert colour["archive"]["images"] == 2 and colour["test"]["images"] == 1
    assert "Self-supervised colour" in out and "CBM3D (published)" in out


def test_bench_levers(ray_session, tmp_path):
    copy_samples(tmp_path / "test", ("camera.png",))
    out = run_bench(ray_session, "levers.py", "--test", str(tmp_path / "test"), "--limit", "1")
    assert out.count("| flat") == 3 and "| gaussian s6 |" in out and "| gaussian s3 ensemble |" in out


def test_gpu_check_runs_on_a_machine_with_torch_alone(tmp_path):
    """bench/gpu_check.py is for the device machine, which has torch but neither Ray nor pyarrow: here it
    runs on the CPU, at toy sizes, with both imports made to fail."""
    runner = ("import runpy, sys; sys.modules['ray'] = sys.modules['pyarrow'] = None; "
              "sys.argv = ['gpu_check.py', *sys.argv[1:]]; "
              f"runpy.run_path({str(ROOT / 'bench' / 'gpu_check.py')!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", runner, "--device", "cpu", "--seconds", "0.05", "--images", "4",
                        "--tiles", "256", "--train-batch", "8", "--json", str(tmp_path / "g.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # the training line names the shipped recipe's precision: fp32 on a CPU without native bf16
    assert "| fp32 |" in r.stdout and "| bf16 |" in r.stdout and "train epochs (the photo recipe" in r.stdout
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["device"] == "CPU" and result["fp32"]["restore_mp_s"] > 0 and result["train_samples_s"] > 0
    assert result["bf16"]["restore_mp_s_big_passes"] > 0


def test_bench_deep(ray_session, tmp_path):
    copy_samples(tmp_path / "test", ("chelsea.png",))
    out = run_bench(ray_session, "deep.py", "--test", str(tmp_path / "test"), "--model", "builtin:color",
                    "--json", str(tmp_path / "d.json"))
    assert "| images | σ | noisy dB | restored at 16 bits dB |" in out
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["images"] == 1 and result["restored_16_db"] > result["noisy_db"] + 5


def test_bench_damage(ray_session, tmp_path):
    """Every damage of the quality-on-real-damage bench, on one gray and one colour test image, through
    `raeae.restore` with no flags; BM3D left out (slow)."""
    for kind, name in (("gray", "camera.png"), ("colour", "astronaut.png")):
        copy_samples(tmp_path / kind, (name,))
    out = run_bench(ray_session, "damage.py", "--test", str(tmp_path / "gray"), "--test-color", str(tmp_path / "colour"),
                    "--bm3d-images", "0", "--out", str(tmp_path / "d"))
    assert "| salt-and-pepper 5 % | impulse | impulse 1 | 1/1 (100 %) |" in out
    results = json.loads((tmp_path / "d" / "damage.json").read_text())["results"]
    assert set(results) == {"gray", "colour"} and len(results["gray"]) == 9
    for per_set in results.values():
        for r in per_set.values():
            assert {"input", "TV", "3×3 median", "switching median", "raeae"} <= set(r["methods"])


def test_bench_overheads(ray_session, tmp_path):
    out = run_bench(ray_session, "overheads.py", "--scale", "0.002", "--out", str(tmp_path))
    assert "damage detection, all files" in out and "report written again" in out
    data = json.loads((tmp_path / "overheads.json").read_text())
    assert data["files"] == 7 and data["detect_s"] > 0 and data["report_s"] > 0


def test_bench_jpeg_grid(tmp_path):
    from conftest import photo

    for folder, name in (("bsd68", "camera.png"), ("cbsd68", "astronaut.png")):
        (tmp_path / folder).mkdir()
        for i in range(2):
            image = photo(name)[i * 40:i * 40 + 200, :220]
            Image.fromarray(image).save(tmp_path / folder / f"{i}.png")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "jpeg_grid.py"), "--test", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| q20 | " in r.stdout and "/2 |" in r.stdout and "ms an image" in r.stdout
