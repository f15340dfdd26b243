"""Models that see past their tile (ModelConfig.margin): the geometry of tiles with margins at restore and in
training, and widening a model's margin with --init without changing what it restores."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from raeae import bands
from raeae.corrupt import Noise, NoiseConfig
from raeae.damaged_patches import DamagedPatchSampler
from raeae.inference import restore_arrays
from raeae.jpeg import JPEG_INPUTS, JpegFinding, compress, ijg_scale
from raeae.model import ModelConfig, build_model, describe_network
from raeae.patches import PatchSampler, restore_tiles
from raeae.train_config import TrainConfig
from raeae.training import init_weights

from conftest import photo


def inside(margin: int, patch: int, channels: int):
    """A "model" that returns the tile inside its margin: restoring with it must give the image back."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        side = patch + 2 * margin
        return x.reshape(x.shape[0], channels, side, side)[:, :, margin:margin + patch, margin:margin + patch].flatten(1)
    return fn


@pytest.mark.parametrize("h,w", [(1, 1), (7, 5), (29, 31), (64, 3)])
@pytest.mark.parametrize("margin,stride", [(1, 3), (4, 4), (6, 13)])
def test_tiles_with_margins_are_the_image_around_each_tile(h, w, margin, stride):
    x = torch.rand(2, 3, h, w)
    assert torch.allclose(restore_tiles(inside(margin, 13, 3), x, 13, stride, margin=margin), x, atol=1e-6)
    banded = restore_tiles(inside(margin, 13, 3), x, 13, stride, margin=margin, max_tiles=5)  # bands of tile rows
    assert torch.allclose(banded, x, atol=1e-6)


def test_a_margin_widens_the_first_layer_only_and_round_trips():
    cfg = ModelConfig(patch_size=13, channels=3, noise_input=True, jpeg_input=True, margin=4)
    model = build_model(cfg)
    assert model.encoder[0].in_features == 21 * 21 + 1 + JPEG_INPUTS and model.decoder[-1].out_features == 169
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["margin"]  # checkpoints from before margins
    assert ModelConfig.from_dict(old).margin == 0
    assert describe_network(cfg).startswith("441+σ+9 JPEG->") and "->169 on each of 3" in describe_network(cfg)
    x = torch.rand(5, 3 * 441)
    assert model(x, level=0.1).shape == (5, 3 * 169)
    with pytest.raises(ValueError, match="margin"):
        ModelConfig(margin=-1)


def test_widening_the_margin_of_a_model_restores_exactly_as_before():
    cfg = TrainConfig(data="x", output="y", init="builtin:jpeg", noise=NoiseConfig(noise=Noise.JPEG),
                      model=replace(TrainConfig().model, margin=4))
    wide_cfg, weights = init_weights(cfg)
    assert wide_cfg.model.margin == 4 and wide_cfg.model.jpeg_input
    wide = build_model(wide_cfg.model)
    wide.load_state_dict(weights)
    from raeae.checkpoint import load_model

    base = load_model("builtin:jpeg").float()
    image = compress(photo("astronaut.png")[:64, :80], 20)[3:, 5:]
    finding = JpegFinding(ijg_scale(20), (3, 5))
    for model_input in (image, image[..., 0]):
        a, = restore_arrays(base, [model_input], jpeg=[finding])
        b, = restore_arrays(wide.eval(), [model_input], jpeg=[finding])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and (a == b).mean() > 0.999


def test_damaged_patches_with_a_margin_are_the_damaged_image_around_the_clean_patch():
    gray = photo("camera.png")[100:196, 100:228]
    sampler = DamagedPatchSampler([torch.from_numpy(gray[None].copy())], 13,
                                  NoiseConfig(noise=Noise.JPEG, quality=20, quality_max=20, noise_share=0.0),
                                  augment=False, patches_per_image=40, margin=4)
    epoch = sampler.sample(torch.Generator().manual_seed(0))
    assert epoch.clean.shape == (40, 1, 13, 13) and epoch.damaged.shape == (40, 1, 21, 21)
    whole = compress(gray, 20)
    windows = np.lib.stride_tricks.sliding_window_view(gray, (13, 13))
    for k in range(40):
        ys, xs = np.nonzero((windows == epoch.clean[k, 0].numpy()).all(axis=(2, 3)))
        y, x = ys[0], xs[0]
        assert y % 4 == 0 and x % 4 == 0 and y >= 4 and x >= 4  # restore's tile grid, the margin inside the image
        assert np.array_equal(epoch.damaged[k, 0].numpy(), whole[y - 4:y + 17, x - 4:x + 17])
        # the phase told is the tile's, not the margin's corner
        assert epoch.jpeg[k, 1:5].argmax().item() == (y % 16) // 4 and epoch.jpeg[k, 5:].argmax().item() == (x % 16) // 4


def test_small_images_still_give_patches_with_margins():
    tiny = [torch.randint(0, 256, (3, 9, 11), dtype=torch.uint8)]
    for margin in (2, 4, 5):
        epoch = DamagedPatchSampler(tiny, 13, NoiseConfig(noise=Noise.JPEG, quality=30, quality_max=30),
                                    patches_per_image=3, margin=margin).sample(torch.Generator().manual_seed(1))
        assert epoch.damaged.shape == (3, 3, 13 + 2 * margin, 13 + 2 * margin) and epoch.clean.shape == (3, 3, 13, 13)


def test_gaussian_training_with_a_margin_learns_the_inside_of_each_patch():
    from raeae.train_loop import Clock, EpochTrainer

    cfg = TrainConfig(data="x", output="y", batch_size=32, lr=1e-3, epochs=1, noise=NoiseConfig(sigma=25.0),
                      model=ModelConfig(patch_size=7, channels=1, hidden=(64,), latent=32, decoder_hidden=(64,),
                                        residual=True, margin=3))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    images = [torch.from_numpy(photo("camera.png")[:128, :128].copy())[None]]
    sampler = PatchSampler(images, cfg.model.side, patches_per_image=32 * 40)
    trainer = EpochTrainer(cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.lr), sampler, torch.device("cpu"))
    noisy, clean, _ = trainer._batch(sampler.sample(torch.Generator().manual_seed(0))[:4], torch.Generator())
    assert noisy.shape == (4, 13 * 13) and clean.shape == (4, 7 * 7)
    first = trainer.run_epoch(1, Clock(float("inf")))["train_loss"]
    last = trainer.run_epoch(2, Clock(float("inf")))["train_loss"]
    assert last < first


def test_a_large_image_with_a_margin_restored_in_bands_equals_it_restored_whole(monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(patch_size=13, channels=3, hidden=(32,), latent=16, decoder_hidden=(32,),
                                    residual=True, noise_input=True, margin=6)).eval()
    image = photo("astronaut.png")[:200, :160]
    whole, = restore_arrays(model, [image], stride=4, noise_level=10.0, bands=False)
    monkeypatch.setattr(bands, "BAND_PIXELS", 32 * 160)
    banded, = restore_arrays(model, [image], stride=4, noise_level=10.0)
    assert np.abs(banded.astype(int) - whole.astype(int)).max() <= 1 and (banded == whole).mean() > 0.999


def test_self_supervised_training_refuses_a_margin():
    with pytest.raises(ValueError, match="--margin"):
        TrainConfig(data="x", output="y", self_supervised=True, model=ModelConfig(margin=2))
