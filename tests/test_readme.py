"""The README's marked blocks run verbatim, so the docs and the code cannot drift apart.

A fenced block whose info string is ``bash test:NAME`` (or ``sql test:NAME``, ``python test:NAME``) is
part of test NAME; its lines run as written, in order, in a fresh ``bash -e`` (or the venv's Python)
from the repository root. The local-head
section starts a `ray start --head` on Ray's default ports, so these tests run first in the session
(see conftest), before the session's own Ray takes ports of its own.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(bash|sql|python) test:([\w-]+)\n(.*?)^```", re.M | re.S)
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

pytestmark = pytest.mark.slow


def blocks(name: str, lang: str = "bash") -> list[str]:
    found = [body for kind, tag, body in BLOCK.findall((ROOT / "README.md").read_text()) if tag == name and kind == lang]
    assert found, f"README has no ```{lang} test:{name} block"
    return found


def fresh_shell_env(home: Path, venv_on_path: bool) -> dict:
    """What a new terminal has: a system PATH (the venv only if the section says to activate it
    first), no Ray or cloud variables from this test session."""
    path = "/usr/local/bin:/usr/bin:/bin"
    if venv_on_path:
        path = f"{ROOT / '.venv' / 'bin'}:{path}"
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def run_bash(script: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def kill_processes_of(home: Path) -> None:
    """Whatever the README's commands left running under this test's HOME (a head that a failed step
    never stopped), and nothing else: never `ray stop`, which would end every Ray on the machine."""
    for p in psutil.process_iter():
        try:
            if p.environ().get("HOME") == str(home):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def run_section(name: str, tmp_path: Path, venv_on_path: bool) -> subprocess.CompletedProcess:
    """Section ``name``'s blocks in a fresh shell with its own HOME; whatever they leave running is
    stopped afterwards, whatever happened."""
    home = tmp_path / "home"
    home.mkdir()
    try:
        return run_bash("\n".join(blocks(name)), fresh_shell_env(home, venv_on_path))
    finally:
        kill_processes_of(home)


def test_local_head_section_runs_line_by_line(tmp_path):
    """A fresh shell follows the local-head section: token, venv, head, sample archive, nightly job."""
    p = run_section("local-head", tmp_path, venv_on_path=False)
    said = p.stdout + p.stderr
    assert "Job 'raysubmit_" in said and "succeeded" in said, said[-3000:]
    import raeae

    rows = raeae.read_restored(str(ROOT / "runs" / "nightly"))
    assert len(rows) == 19 and rows["status"].to_pylist().count("error") == 2


def test_examples_run_and_the_duckdb_query_reads_their_output(tmp_path, monkeypatch):
    """The restore / export examples and the DuckDB query on their Parquet."""
    run_section("examples", tmp_path, venv_on_path=True)
    import duckdb

    con = duckdb.connect()
    monkeypatch.chdir(ROOT)
    for sql in blocks("query", lang="sql"):
        rows = con.sql(sql).fetchall()
        assert rows and all(r[1] == "error" for r in rows)
    assert len(list((ROOT / "runs" / "restored-png").rglob("*.png"))) == 17


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="needs ../shared/data/mnist")
def test_mnist_example_trains_at_a_tiny_budget(tmp_path):
    p = run_section("mnist", tmp_path, venv_on_path=True)
    assert "preset digits" in p.stdout and "validation PSNR" in p.stdout, p.stdout[-2000:]


def test_the_library_example_trains_restores_and_reads(tmp_path):
    """The README's Library block, as a newcomer pastes it into the venv's Python."""
    code = "\n".join(blocks("library", lang="python"))
    home = tmp_path / "home"
    home.mkdir()
    try:
        p = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], cwd=ROOT, capture_output=True,
                           text=True, timeout=900, env=fresh_shell_env(home, venv_on_path=True))
    finally:
        kill_processes_of(home)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "trained:" in p.stdout and "17 ok, 2 errors;" in p.stdout, p.stdout[-2000:]
