"""Which run a `raeae train` trains: new by default, resumed only when asked, refused on other settings."""

import json
import os
import time

import pytest

from raeae import checkpoint as ckpt
from raeae.model import ModelConfig, build_model
from raeae.runs import choose_run, differences, new_run_name, write_record
from raeae.storage import StorageConfig
from raeae.train_config import TrainConfig

S = StorageConfig()


def _config(**kw) -> dict:
    return TrainConfig(**{"data": "d", "output": "o", **kw}).to_dict()


def test_every_invocation_is_a_new_run_by_default(tmp_path):
    a = choose_run("", False, str(tmp_path), S, _config())
    b = choose_run("", False, str(tmp_path), S, _config())
    assert not a.resumed and not b.resumed and a.name != b.name and a.name.startswith("train-")


def test_run_names_sort_by_start_time():
    first = new_run_name()
    time.sleep(1.1)
    assert new_run_name() > first


def test_a_named_run_that_does_not_exist_starts_under_that_name(tmp_path):
    run = choose_run("mine", False, str(tmp_path), S, _config())
    assert run.name == "mine" and not run.resumed and run.finished == ""


def test_resume_with_nothing_to_resume_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run to resume"):
        choose_run("", True, str(tmp_path), S, _config())
    with pytest.raises(ValueError, match="no run named ghost"):
        choose_run("ghost", True, str(tmp_path), S, _config())


def test_resume_picks_the_latest_run_and_checks_its_settings(tmp_path):
    write_record(str(tmp_path), S, "old", _config(lr=1e-3))
    time.sleep(0.01)
    write_record(str(tmp_path), S, "new", _config())
    run = choose_run("", True, str(tmp_path), S, _config(workers=2, output="elsewhere"))
    assert run.name == "new" and run.resumed and run.latest is None and run.finished == ""
    with pytest.raises(ValueError, match=r"run old was started with other settings \(lr: 0.001 -> 0.0003\)"):
        choose_run("old", False, str(tmp_path), S, _config())


def test_a_finished_run_says_why_from_its_latest_checkpoint(tmp_path):
    cfg = _config()
    write_record(str(tmp_path), S, "done", cfg)
    model_cfg = ModelConfig(patch_size=4, hidden=(8,), latent=4, decoder_hidden=())
    for stamp, stopped in (("2026-01-01_00-00-01.000000", ""), ("2026-01-01_00-00-02.000000", "time budget")):
        state = ckpt.checkpoint_state(build_model(model_cfg), model_cfg, train_config=cfg,
                                      progress={"epoch": 3 if stopped else 2, "stopped": stopped})
        ckpt.save(state, str(tmp_path / "done" / f"checkpoint_{stamp}"))
    (tmp_path / "done" / "checkpoint_2026-01-01_00-00-03.000000").mkdir()  # killed mid-write: skipped
    (tmp_path / "done" / "checkpoint_2026-01-01_00-00-03.000000" / "model.pt").write_bytes(b"cut")
    run = choose_run("done", False, str(tmp_path), S, cfg)
    assert run.resumed and run.finished == "time budget" and run.epoch == 3


def test_runtime_settings_may_change_between_attempts():
    stored = _config()
    assert differences(stored, _config(workers=4, gpu=True, cpus_per_worker=8, output="x", failures=5)) == []
    assert differences(stored, _config(epochs=5)) == ["epochs: 0 -> 5"]
    assert json.loads(json.dumps(stored)) == stored  # the record is plain JSON


def test_train_sets_rays_health_check_only_while_it_runs_and_never_over_the_users(monkeypatch):
    from raeae.training import HEALTH_CHECK_ENV, HEALTH_CHECK_S, env_default

    monkeypatch.delenv(HEALTH_CHECK_ENV, raising=False)
    with env_default(HEALTH_CHECK_ENV, HEALTH_CHECK_S):
        assert os.environ[HEALTH_CHECK_ENV] == HEALTH_CHECK_S
    assert HEALTH_CHECK_ENV not in os.environ  # a library call leaves the environment as it found it
    monkeypatch.setenv(HEALTH_CHECK_ENV, "3")
    with env_default(HEALTH_CHECK_ENV, HEALTH_CHECK_S):
        assert os.environ[HEALTH_CHECK_ENV] == "3"
    assert os.environ[HEALTH_CHECK_ENV] == "3"


def test_a_setting_added_since_a_run_started_counts_as_its_default():
    stored = {"noise": {"noise": "jpeg", "sigma": 5.0}, "epochs": 0}
    defaults = {"noise": {"peak": 30.0, "peak_max": 0.0}, "new_flag": False}
    assert differences(stored, {"noise": {"noise": "jpeg", "sigma": 5.0, "peak": 30.0, "peak_max": 0.0}, "epochs": 0,
                                "new_flag": False}, defaults) == []
    assert differences(stored, {"noise": {"noise": "jpeg", "sigma": 5.0, "peak": 10.0, "peak_max": 0.0}, "epochs": 0,
                                "new_flag": True}, defaults) == ["new_flag: False -> True", "noise.peak: 30.0 -> 10.0"]
