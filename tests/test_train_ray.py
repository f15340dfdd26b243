"""One real Ray Train run with 2 DDP workers on a local Ray, then a resume with the same run name."""

import numpy as np
import pytest
import torch

import raeae
from raeae.corrupt import NoiseConfig
from raeae.model import ModelConfig
from raeae.train import TrainConfig, train
from tests.test_data import write_mnist

pytestmark = pytest.mark.slow


def test_train_two_workers_then_resume(ray_session, tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    write_mnist(data, n=600, size=8)
    cfg = TrainConfig(data=str(data), output=str(tmp_path / "best"), workers=2, epochs=2, batch_size=64,
                      model=ModelConfig(patch_size=8, hidden=(32,), latent=16, decoder_hidden=()),
                      noise=NoiseConfig(sigma=50), storage_path=str(tmp_path / "ray"), run_name="t", patience=0)
    first = train(cfg)
    assert [h["epoch"] for h in first.history] == [1, 2]
    assert all(h["steps"] == (600 - 30) // 2 // 32 for h in first.history)  # global batch split over 2 ranks
    assert np.isfinite(first.best_val_psnr) and first.best_val_psnr_noisy < 25
    model = raeae.load_model(str(tmp_path / "best"))
    assert model.config == cfg.model
    state = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert state["train_config"]["workers"] == 2 and state["metrics"]["epoch"] == first.best_epoch
    out = raeae.restore_image(model, np.full((8, 8), 128, np.uint8))
    assert out.shape == (8, 8) and out.dtype == np.uint8

    # Same storage path and run name: Ray Train resumes from the last checkpoint, epochs 1-2 are kept.
    again = train(TrainConfig(**{**cfg.__dict__, "epochs": 3}))
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert again.history[:2] == first.history
