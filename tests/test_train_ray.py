"""Real Ray Train runs with 2 DDP workers on a local Ray: a stop decided once for all ranks, then what
re-running the same run does (nothing, for a finished run; refused, for other settings)."""

import numpy as np
import pytest
import torch
from PIL import Image

import raeae
from raeae.corrupt import NoiseConfig
from raeae.model import ModelConfig
from raeae.training import train
from raeae.train_config import TrainConfig

pytestmark = pytest.mark.slow


def _folder(d, n: int, size: int, seed: int = 0):
    d.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth gradients plus a few blobs: something a denoiser can learn in seconds
        y, x = np.mgrid[0:size, 0:size] / size
        img = 255 * (0.5 + 0.3 * np.sin(6 * x + i) * np.cos(4 * y - i)) + rng.normal(0, 2, (size, size))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"img{i:02d}.png")
    return d


@pytest.mark.timeout(400)
def test_two_workers_stop_together_when_rank0_validation_outlasts_the_budget(ray_session, tmp_path):
    """Most of each epoch is rank 0's validation (30+ large held-out images, a few tiny training ones),
    so the time budget nearly always runs out while rank 0 validates and rank 1 waits. Deciding on each
    rank's own clock hung this run for ever (rank 0 stopped, rank 1 started the next epoch)."""
    data = _folder(tmp_path / "photos", n=40, size=192)
    model = ModelConfig(patch_size=8, hidden=(512,), latent=256, decoder_hidden=(512,), residual=True)
    cfg = TrainConfig(data=str(data), output=str(tmp_path / "best"), workers=2, model=model,
                      noise=NoiseConfig(sigma=25), epochs=0, max_minutes=0.15, val_fraction=0.85,
                      patches_per_image=64, batch_size=64, storage_path=str(tmp_path / "ray"), run_name="t")
    first = train(cfg)
    assert first.stopped == "time budget" and first.epochs_trained == len(first.history) >= 2
    assert 0.1 < first.minutes_trained < 1.0
    elapsed = [h["elapsed_s"] for h in first.history]  # each epoch records the run's wall time so far
    assert elapsed == sorted(elapsed) and elapsed[-1] == pytest.approx(first.minutes_trained * 60, abs=1.0)
    assert np.isfinite(first.best_val_psnr) and first.best_val_psnr > first.best_val_psnr_noisy
    model_back = raeae.load_model(str(tmp_path / "best"))
    assert model_back.config == cfg.model
    state = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert state["train_config"]["workers"] == 2 and state["metrics"]["epoch"] == first.best_epoch
    out = raeae.restore_image(model_back, np.full((8, 8), 128, np.uint8))
    assert out.shape == (8, 8) and out.dtype == np.uint8

    # The same run again: it has finished, so nothing trains (no Ray Train fit), and the best model
    # is written to the new output.
    again = train(TrainConfig(**{**cfg.__dict__, "output": str(tmp_path / "again"), "workers": 1}))
    assert again.epochs_trained == 0 and again.fit_s == 0.0 and again.history == first.history
    assert raeae.load_model(str(tmp_path / "again")).config == cfg.model

    # Other settings under the same name are refused, naming what differs.
    with pytest.raises(ValueError, match="max_minutes: 0.15 -> 3"):
        train(TrainConfig(**{**cfg.__dict__, "max_minutes": 3.0}))
