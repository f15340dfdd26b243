"""Smoke run of the main job (README command 1) at a tiny size."""

import json

import pytest

from raeae.demo import DemoConfig, demo

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(ray_session, tmp_path, capsys):
    result = demo(DemoConfig(workdir=str(tmp_path / "demo"), epochs=1, max_minutes=0.2, workers=1))
    out = capsys.readouterr().out
    assert "Parquet:" in out and "| raeae |" in out
    summary = json.loads((tmp_path / "demo" / "restored" / "_summary.json").read_text())
    assert summary["rows"] == summary["files"] == 7 and summary["errors"] == 2
    assert (tmp_path / "demo" / "evaluate" / "grid.png").exists()
    assert len(result["gains"]) == 5
