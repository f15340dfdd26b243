"""The three jobs through a real `ray job submit` path: a local head started by `ray start` on
loopback ports, jobs submitted with JobSubmissionClient, outputs checked. The head is stopped by its
own process group, not `ray stop` (which would end every Ray on the machine)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raeae.contract import read_restored
from tests.conftest import free_port
from tests.test_data import write_mnist

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    ray_exe = str(Path(sys.executable).parent / "ray")
    port, dash = free_port(), free_port()
    temp = tmp_path_factory.mktemp("rayhead")
    # Every port explicit and free: the session's own Ray already holds the defaults (agent 52365...).
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
             f"--object-manager-port={free_port()}"]
    proc = subprocess.Popen([ray_exe, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", *ports,
                             f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_ADDRESS": ""})  # token: see conftest
    from ray.job_submission import JobSubmissionClient

    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:
        try:
            client = JobSubmissionClient(address)
            client.list_jobs()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("local Ray head did not start")
            time.sleep(1)
    yield client
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        # a throwaway head: measured, `ray start --block` had still not exited 30 s after SIGTERM to its
        # group (the teardown took the full 30 s), so 5 s of grace, then SIGKILL
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def submit(client, script: str, *args: str) -> str:
    from ray.job_submission import JobStatus

    for attempt in range(60):  # the head's job agent comes up a little after its HTTP API
        try:
            job = client.submit_job(entrypoint=" ".join([sys.executable, f"jobs/{script}.py", *map(repr, args)]),
                                    runtime_env={"working_dir": str(ROOT),
                                                 "excludes": [".venv", ".git", "runs", "*.egg-info"]})
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or attempt == 59:
                raise
            time.sleep(1)
    deadline = time.time() + 300
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"{script} job timed out"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    return logs


def test_train_restore_and_nightly_jobs(head, tmp_path, noisy_folder):
    data = tmp_path / "mnist"
    data.mkdir()
    write_mnist(data, n=200, size=8)
    logs = submit(head, "train", "--data", str(data), "--output", str(tmp_path / "model"), "--patch-size", "8",
                  "--hidden", "16", "--latent", "8", "--decoder-hidden", "", "--epochs", "1", "--workers", "1",
                  "--storage-path", str(tmp_path / "ray"))
    assert "validation PSNR" in logs and (tmp_path / "model" / "model.pt").exists()
    logs = submit(head, "restore", "--model", str(tmp_path / "model"), "--input", str(noisy_folder),
                  "--output", str(tmp_path / "restored"))
    assert "2 errors" in logs and "1 other file(s) skipped, not images by name or hidden (README.txt)" in logs
    n_files = sum(1 for p in noisy_folder.rglob("*") if p.is_file() and p.name != "README.txt")
    assert len(read_restored(str(tmp_path / "restored"))) == n_files
    submit(head, "nightly", "--model", str(tmp_path / "model"), "--archive", str(noisy_folder),
           "--output", str(tmp_path / "nightly"), "--run-id", "job1")
    assert len(read_restored(str(tmp_path / "nightly"))) == n_files
