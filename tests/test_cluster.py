"""Connecting to Ray: a dead address costs seconds and one line, never a hang."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import raeae.cluster
from raeae.cluster import RayConnectionError, answers, capacity, choose_address, join_refused, require
from tests.conftest import free_port

ALIVE = "10.1.2.3:6379"


def alive(address: str) -> bool:
    return address == ALIVE


def test_no_address_and_nothing_recorded_starts_a_local_ray():
    assert choose_address(None, None, alive) == ("local", "")
    assert choose_address("local", ALIVE, alive) == ("local", "")


def test_a_live_recorded_cluster_is_joined_and_said_so():
    address, note = choose_address("", ALIVE, alive)
    assert address == ALIVE and "joining" in note and "RAY_ADDRESS=local" in note


def test_a_stale_recorded_address_is_ignored_with_a_note():
    address, note = choose_address(None, "127.0.0.1:1", alive)
    assert address == "local" and "ignoring the stopped Ray cluster recorded at 127.0.0.1:1" in note


@pytest.mark.parametrize("env,words", [
    ("127.0.0.1:1", "RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers there"),
    ("http://127.0.0.1:8265", "is a Jobs API address"),
    ("nonsense", "is not a host:port address"),
    ("auto", "no running Ray cluster was found"),
])
def test_a_ray_address_that_cannot_work_is_one_clear_error(env, words):
    with pytest.raises(RayConnectionError, match=words.replace("(", r"\(")):
        choose_address(env, None, alive)


def test_a_live_ray_address_is_used():
    assert choose_address(ALIVE, None, alive) == (ALIVE, "")


def test_a_cluster_that_refuses_to_be_joined_names_the_token():
    """A `ray start` head (token authentication by default in Ray 2.60) answers the probe, then refuses a
    client without the token: ray.init retries for ~20 s and raises ConnectionError, which becomes this
    one line (measured with bench/restore.py's head: exit 2, this line, 21 s)."""
    exc = ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")
    without = join_refused("10.0.0.5:6379", "", exc)
    assert without.startswith("cannot join the Ray cluster at 10.0.0.5:6379 (Failed to connect")
    assert "set RAY_AUTH_MODE=token and its token" in without
    assert "holds that cluster's token" in join_refused("10.0.0.5:6379", "token", exc)


def test_answers_probes_a_real_socket():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert answers(f"127.0.0.1:{s.getsockname()[1]}")
    assert not answers(f"127.0.0.1:{free_port()}", timeout=1.0)
    assert not answers("no-port-here")


def _raeae(args, env, timeout=120):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "raeae.cli", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p, time.perf_counter() - t0


def test_dead_ray_address_fails_fast_with_one_line(tmp_path, trained_checkpoint, noisy_folder):
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    p, seconds = _raeae(["restore", "--model", str(trained_checkpoint), "--input", str(noisy_folder),
                         "--output", str(tmp_path / "out")], env)
    assert p.returncode == 2 and seconds < 30
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "no Ray cluster answers there" in err[0], p.stderr


@pytest.mark.slow
def test_stale_recorded_address_costs_seconds_not_minutes(tmp_path, trained_checkpoint, noisy_folder):
    """Ray's temp folder names a stopped cluster (a `ray start --head` since stopped): the restore runs
    on its own local Ray, with a note, instead of retrying the dead address for 14 minutes."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    (ray_tmp / "ray").mkdir(parents=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    p, seconds = _raeae(["restore", "--model", str(trained_checkpoint), "--input", str(noisy_folder),
                         "--output", str(tmp_path / "out"), "--actors", "1"], env, timeout=300)
    assert "ignoring the stopped Ray cluster" in p.stdout, p.stdout + p.stderr
    assert p.returncode == 0 and "6 rows (4 ok, 2 errors)" in p.stdout, p.stdout  # a row for every file
    assert "Traceback" not in p.stderr
    # Only raeae's own lines: Ray's INFO and WARNING lines and Ray Data's plan stay quiet in a fresh
    # process too (besides Ray's one C++ line on actor arguments, ray-project/ray#57733, not ours to mute)
    others = [line for line in (p.stdout + p.stderr).splitlines()
              if not line.startswith("raeae") and "constructor arguments in the object store" not in line]
    assert not others, others
    print(f"restore with a stale recorded address: {seconds:.1f} s")
    shutil.rmtree(ray_tmp, ignore_errors=True)


# A fresh process with its own local Ray: stop its monitor as the `raeae` commands do before
# ray.shutdown, and show it went first (the GCS still up), then that the shutdown leaves nothing behind.
MONITOR_FIRST = """
import os
from raeae.cluster import _stop_monitor_first, connect, disconnect
from ray._private import worker
connect()
node = worker._global_node
monitor, gcs = (node.all_processes[kind][0].process for kind in ("monitor", "gcs_server"))
_stop_monitor_first()
print("monitor", "stopped" if monitor.poll() is not None else "running",
      "gcs", "running" if gcs.poll() is None else "stopped")
pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
disconnect()
alive = [p for p in pids if os.path.exists(f"/proc/{p}") and "zombie" not in open(f"/proc/{p}/status").read()]
print("left", alive)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_commands_local_ray_stops_its_monitor_before_the_gcs(tmp_path):
    """ray.shutdown stops the GCS before the autoscaler's monitor, whose SIGTERM handler then waits on
    the gone GCS for a 1 s grace (see raeae.cluster._stop_monitor_first); the commands stop it first."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    p = subprocess.run([sys.executable, "-c", MONITOR_FIRST], env=env, capture_output=True, text=True,
                       timeout=120)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    assert "monitor stopped gcs running" in p.stdout and "left []" in p.stdout, p.stdout + p.stderr


def test_capacity_counts_whole_bundles_per_node():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0}, {"CPU": 0.0}]
    assert capacity({"CPU": 1.0}, nodes) == 10
    assert capacity({"CPU": 3.0}, nodes) == 2  # a bundle never spans two nodes: 8 // 3 + 2 // 3
    assert capacity({"CPU": 1.0, "GPU": 1.0}, nodes) == 1
    assert capacity({"CPU": 0.1}, [{"CPU": 1.0}]) == 10  # 1.0 / 0.1 is 9.999... in floats
    assert capacity({"CPU": 1.0, "GPU": 0.0}, [{"CPU": 2.0}]) == 2  # a zero request asks for nothing
    assert capacity({"CPU": 1.0}, []) == 0


def test_what_cannot_fit_fails_on_the_private_local_ray_and_waits_with_a_note_on_a_joined_one(monkeypatch, capsys):
    nodes = [{"CPU": 2.0}]
    require("raeae train", "--workers 2", 2, {"CPU": 1.0}, nodes, "fix it")  # fits: nothing said
    monkeypatch.setattr(raeae.cluster, "_private_local", True)
    with pytest.raises(ValueError, match=r"--workers 3 x 1 CPU do not fit this machine's Ray \(1 node\(s\): 2 CPUs, "
                                         r"0 GPUs\); fix it"):
        require("raeae train", "--workers 3", 3, {"CPU": 1.0}, nodes, "fix it")
    monkeypatch.setattr(raeae.cluster, "_private_local", False)  # joined: an autoscaler may add nodes
    require("raeae train", "--workers 3", 3, {"CPU": 1.0}, nodes, "fix it")
    out = capsys.readouterr().out
    assert out.startswith("raeae train: note: --workers 3 x 1 CPU do not fit the cluster's nodes now") and \
        "waiting for its autoscaler to add nodes (a cluster without one never will: stop this run and fix it)" in out


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "restore"])
def test_resources_this_machine_lacks_fail_fast_with_one_line(command, tmp_path, clean_photos, noisy_folder):
    """On the private local Ray, a request no node can meet is an error within seconds: Ray itself would
    wait for it forever, silently."""
    env = {**os.environ, "RAY_ADDRESS": "local"}
    args = (["train", "--data", str(clean_photos), "--output", str(tmp_path / "m"), "--epochs", "1",
             "--cpus-per-worker", "1000", "--storage-path", str(tmp_path / "runs")] if command == "train" else
            ["restore", "--input", str(noisy_folder), "--output", str(tmp_path / "out"), "--cpus-per-actor", "1000"])
    p, seconds = _raeae(args, env)
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "x 1000 CPU do not fit this machine's Ray" in err[0], p.stderr
    print(f"{command} that cannot fit: {seconds:.1f} s to its error")
