"""A model told the JPEG damage (jpeg_input): zero-started inputs, training pairs cut on the block
grid from whole damaged images, and restore's tiling on that grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from raeae.corrupt import Noise, NoiseConfig
from raeae.damaged_patches import DamagedPatchSampler
from raeae.inference import pick_model, restore_array, restore_arrays
from raeae.jpeg import JPEG_INPUTS, JpegFinding, compress, context, ijg_scale
from raeae.model import ModelConfig, build_model, describe_network
from raeae.training import init_weights
from raeae.train_config import TrainConfig

from conftest import photo


def jpeg_model(channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(patch_size=13, channels=channels, hidden=(32,), latent=16, decoder_hidden=(32,),
                                   residual=True, noise_input=True, jpeg_input=True)).eval()


def saved_jpeg_model(folder, qualities: tuple[int, int], noise_share: float, seed: int) -> torch.nn.Module:
    """A tiny JPEG model saved with the training damage it learnt and loaded back, as restore loads one."""
    from raeae import checkpoint as ckpt

    m = jpeg_model(seed=seed)
    noise = NoiseConfig(noise=Noise.JPEG, quality=qualities[0], quality_max=qualities[1], noise_share=noise_share)
    return ckpt.load_model(ckpt.save(ckpt.checkpoint_state(m, m.config, noise=noise.to_dict()), str(folder / str(seed))))


def test_jpeg_inputs_widen_the_first_layer_and_round_trip_in_the_config():
    cfg = ModelConfig(patch_size=13, channels=3, noise_input=True, jpeg_input=True)
    assert build_model(cfg).encoder[0].in_features == 169 + 1 + JPEG_INPUTS
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["jpeg_input"]  # checkpoints from before JPEG damage
    assert ModelConfig.from_dict(old).jpeg_input is False
    assert "+σ+9 JPEG" in describe_network(cfg)


def test_fine_tuning_with_jpeg_inputs_starts_from_exactly_the_given_model(tmp_path):
    cfg = TrainConfig(data="x", output="y", init="builtin:color", noise=NoiseConfig(noise=Noise.JPEG),
                      model=replace(TrainConfig().model, channels=3, noise_input=True, jpeg_input=True))
    tuned_cfg, weights = init_weights(cfg)
    assert tuned_cfg.model.jpeg_input and tuned_cfg.model.noise_input
    tuned = build_model(tuned_cfg.model)
    tuned.load_state_dict(weights)
    from raeae.checkpoint import load_model

    base = load_model("builtin:color").float()
    x = torch.rand(8, 3 * 169)
    ctx = context(2.5, torch.arange(8) * 4, torch.zeros(8, dtype=torch.long))
    assert torch.allclose(tuned(x, level=0.05, jpeg=ctx), base(x, level=0.05), atol=1e-5)


def test_damaged_patches_are_cut_on_the_block_grid_from_whole_jpegs():
    gray = photo("camera.png")[100:196, 100:228]
    images = [torch.from_numpy(gray[None].copy())]
    sampler = DamagedPatchSampler(images, 13, NoiseConfig(noise=Noise.JPEG, quality=20, quality_max=20, noise_share=0.0),
                                  augment=False, patches_per_image=50)
    epoch = sampler.sample(torch.Generator().manual_seed(0))
    assert len(epoch) == 50 and epoch.clean.shape == epoch.damaged.shape == (50, 1, 13, 13)
    assert epoch.jpeg.shape == (50, JPEG_INPUTS) and torch.all(epoch.jpeg[:, 0] == ijg_scale(20))
    assert torch.all(epoch.level == epoch.level[0])  # one image: one level, as restore estimates it
    # every damaged patch is the patch at its place of the whole compressed image, a place on the grid
    whole = compress(gray, 20)
    windows = np.lib.stride_tricks.sliding_window_view(gray, (13, 13))
    for k in range(50):
        ys, xs = np.nonzero((windows == epoch.clean[k, 0].numpy()).all(axis=(2, 3)))
        y, x = ys[0], xs[0]
        assert y % 4 == 0 and x % 4 == 0
        assert np.array_equal(epoch.damaged[k, 0].numpy(), whole[y:y + 13, x:x + 13])
        assert epoch.jpeg[k, 1:5].argmax().item() == (y % 16) // 4 and epoch.jpeg[k, 5:].argmax().item() == (x % 16) // 4
    again = sampler.sample(torch.Generator().manual_seed(0))
    assert torch.equal(again.damaged, epoch.damaged)  # an epoch is a function of its seed


def test_jpeg_images_are_tiled_on_their_grid_wherever_the_image_starts():
    model = jpeg_model()
    image = compress(photo("astronaut.png")[:80, :96], 20)
    whole = restore_array(model, image, jpeg=JpegFinding(ijg_scale(20), (0, 0)), noise_level=10.0)
    # the same image cropped by 3 rows and 5 columns: its grid starts at (5, 3); the tiles still lie on
    # it, so away from the borders every pixel is restored exactly as in the whole image
    cropped = restore_array(model, image[3:, 5:], jpeg=JpegFinding(ijg_scale(20), (5, 3)), noise_level=10.0)
    assert np.abs(cropped[20:-20, 20:-20].astype(int) - whole[23:-20, 25:-20].astype(int)).max() <= 1
    # a model told nothing of JPEG restores it differently
    assert not np.array_equal(whole, restore_array(model, image, noise_level=10.0))


def test_packed_jpeg_restores_equal_one_image_at_a_time_and_pick_the_jpeg_model():
    model = jpeg_model()
    images = [compress(photo("astronaut.png")[:40, :56], q) for q in (10, 50)] + [photo("camera.png")[:33, :47]]
    findings = [JpegFinding(ijg_scale(10)), JpegFinding(ijg_scale(50), (2, 6)), None]
    packed = restore_arrays(model, images, jpeg=findings, pack_tiles=10**6)
    for image, finding, out in zip(images, findings, packed):
        alone = restore_array(model, image, jpeg=finding)
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 1
    plain = build_model(ModelConfig(patch_size=13, channels=3, hidden=(8,), latent=4, decoder_hidden=(8,)))
    gray = build_model(ModelConfig(patch_size=13, channels=1, hidden=(8,), latent=4, decoder_hidden=(8,)))
    models = [gray, plain, model]
    assert pick_model(models, images[0], jpeg=findings[0]) is model
    assert pick_model(models, images[2], jpeg=findings[0]) is model  # a gray JPEG too: the colour JPEG model
    assert pick_model(models, images[0]) is plain and pick_model(models, images[2]) is gray
    assert pick_model(models, images[0], jpeg=JpegFinding(0.0)) is plain  # scale 0: no JPEG damage


def test_each_jpeg_goes_to_the_model_that_learnt_the_narrowest_range_holding_its_quality(tmp_path):
    every, low = saved_jpeg_model(tmp_path, (10, 95), 0.5, 0), saved_jpeg_model(tmp_path, (10, 50), 0.5, 1)
    assert (every.jpeg_qualities, low.jpeg_qualities) == ((10, 95), (10, 50))  # read back from the checkpoint
    plain = build_model(ModelConfig(patch_size=13, channels=3, hidden=(8,), latent=4, decoder_hidden=(8,)))
    image = compress(photo("astronaut.png")[:40, :56], 20)
    for models in ([plain, every, low], [low, every, plain]):  # not by their order
        assert pick_model(models, image, jpeg=JpegFinding(ijg_scale(20))) is low
        assert pick_model(models, image, jpeg=JpegFinding(ijg_scale(50))) is low  # the range's ends included
        assert pick_model(models, image, jpeg=JpegFinding(ijg_scale(75))) is every
        assert pick_model(models, image, jpeg=JpegFinding(ijg_scale(5))) is low  # none holds it: the narrowest
        assert pick_model(models, image) is plain


def test_a_jpeg_model_that_learnt_no_noise_gets_only_jpegs_that_show_none(tmp_path):
    every, low = saved_jpeg_model(tmp_path, (10, 95), 0.5, 0), saved_jpeg_model(tmp_path, (10, 50), 0.0, 1)
    assert every.jpeg_noise and not low.jpeg_noise
    clean = photo("astronaut.png")[100:292, 100:292]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    finding = JpegFinding(ijg_scale(40))
    assert pick_model([every, low], compress(clean, 40), jpeg=finding) is low
    assert pick_model([every, low], compress(noisy, 40), jpeg=finding) is every  # noise before compression


@pytest.mark.parametrize("quality", [20])
def test_a_short_jpeg_fine_tune_learns_to_undo_jpeg(quality):
    """Not the release: a few hundred steps from the bundled colour model on one photograph must
    already improve on the JPEG it was given (the inputs start at zero, the loss goes down)."""
    from raeae.train_loop import EpochTrainer, Clock

    cfg = TrainConfig(data="x", output="y", init="builtin:color", batch_size=64, lr=2e-4, epochs=1,
                      noise=NoiseConfig(noise=Noise.JPEG, quality=quality, quality_max=quality, noise_share=0.0),
                      model=replace(TrainConfig().model, channels=3, noise_input=True, jpeg_input=True))
    cfg, weights = init_weights(cfg)
    model = build_model(cfg.model)
    model.load_state_dict(weights)
    images = [torch.from_numpy(photo("astronaut.png")[:256, :256].copy()).permute(2, 0, 1)]
    sampler = DamagedPatchSampler(images, 13, cfg.noise, patches_per_image=64 * 60)
    trainer = EpochTrainer(cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.lr), sampler, torch.device("cpu"))
    first = trainer.run_epoch(1, Clock(float("inf")))["train_loss"]
    last = trainer.run_epoch(2, Clock(float("inf")))["train_loss"]
    assert last < first


@pytest.mark.parametrize("height, width", [(37, 53), (48, 32), (16, 9)])
def test_each_flipped_view_of_a_jpeg_keeps_its_blocks_on_a_grid_from_the_corner(height, width):
    from raeae.inference import _grid_views

    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    block = ((ys // 16) * 100 + xs // 16).float()[None, None]  # each pixel labelled with its 16×16 block
    views = list(_grid_views(block))
    assert len(views) == 4
    for fwd, inv in views:
        view = fwd(block)
        assert torch.equal(inv(view), block)
        h, w = view.shape[-2:]
        for y in range(0, h, 16):
            for x in range(0, w, 16):  # every block of the view, its padding included, is one block of the image
                assert view[..., y:y + 16, x:x + 16].unique().numel() == 1


def test_the_ensemble_restores_a_jpeg_in_four_flips_each_on_its_own_grid():
    model = jpeg_model()
    image = compress(photo("astronaut.png")[:45, :61], 20)
    finding = JpegFinding(ijg_scale(20), (3, 5))
    once, four = restore_array(model, image, jpeg=finding), restore_array(model, image, jpeg=finding, ensemble=True)
    assert four.shape == image.shape and not np.array_equal(once, four)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # a residual net with zero weights is the identity: every view must land back in place
    assert np.array_equal(restore_array(model, image, jpeg=finding, ensemble=True), image)
