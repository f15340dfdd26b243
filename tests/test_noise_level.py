"""Noise-level input (``--noise-input``, as FFDNet's noise map): the network is told the σ of what it
restores. Training gives it the σ it drew; restoring estimates it per image, or takes the one given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raeae import checkpoint as ckpt
from raeae.corrupt import NoiseConfig, Noise, corrupt, corrupt_with_level, estimate_sigma, noise_level
from raeae.inference import noise_level_of, restore_array, restore_arrays
from raeae.model import ModelConfig, build_model
from raeae.training import init_weights
from raeae.train_config import TrainConfig
from raeae.train_loop import EpochTrainer

from conftest import photo, png_bytes


def level_model(channels: int = 1, noise_input: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(patch_size=6, channels=channels, hidden=(32,), latent=16, decoder_hidden=(32,),
                                    residual=True, noise_input=noise_input)).eval()
    with torch.no_grad():  # make the level matter: a fresh network's one input weight column is tiny
        model.encoder[0].weight[:, -1].mul_(50.0)
    return model


def test_the_level_is_one_more_input_and_changes_the_output():
    model = level_model()
    assert model.encoder[0].in_features == 36 + 1
    x = torch.rand(4, 36)
    with torch.no_grad():
        low, high = model(x, level=5 / 255), model(x, level=torch.full((4,), 50 / 255))
    assert not torch.allclose(low, high)
    with pytest.raises(ValueError, match="noise level"):
        model(x)


def test_a_level_per_row_is_each_row_own():
    model = level_model()
    x = torch.rand(3, 36)
    levels = torch.tensor([5.0, 25.0, 50.0]) / 255
    with torch.no_grad():
        together = model(x, level=levels)
        alone = torch.cat([model(x[i:i + 1], level=levels[i]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_corrupt_with_level_reports_the_sigma_each_sample_got():
    x = torch.full((400, 1, 16, 16), 0.5)
    noisy, level = corrupt_with_level(x, NoiseConfig(sigma=5, sigma_max=50), torch.Generator().manual_seed(0))
    assert level.shape == (400,) and float(level.min()) >= 5 / 255 and float(level.max()) <= 50 / 255
    measured = (noisy - x).flatten(1).std(dim=1)
    assert torch.corrcoef(torch.stack([measured, level]))[0, 1] > 0.99
    # the same draws as plain corrupt: adding the level changed no one's noise
    again = corrupt(x, NoiseConfig(sigma=5, sigma_max=50), torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    _, none = corrupt_with_level(x, NoiseConfig(noise=Noise.SALT_PEPPER), torch.Generator().manual_seed(0))
    assert none is None


def test_training_tells_the_network_each_patch_sigma():
    cfg = TrainConfig(model=ModelConfig(patch_size=6, hidden=(16,), latent=8, decoder_hidden=(16,), residual=True,
                                        noise_input=True),
                      noise=NoiseConfig(sigma=0, sigma_max=55), epochs=1, batch_size=8)
    model = build_model(cfg.model)
    trainer = EpochTrainer(cfg, model, torch.optim.Adam(model.parameters()), sampler=[0] * 8,
                           device=torch.device("cpu"))
    patches = torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8)
    noisy, clean, level = trainer._batch(patches, torch.Generator().manual_seed(1))
    assert level.shape == (8,) and float(level.std()) > 0
    loss = trainer._step_loss(patches, torch.Generator().manual_seed(1))
    loss.backward()
    assert float(model.encoder[0].weight.grad[:, -1].abs().sum()) > 0  # the level's input is learnt


@pytest.mark.parametrize("kwargs", [dict(noise=NoiseConfig(noise=Noise.SALT_PEPPER)), dict(self_supervised=True)])
def test_the_level_input_needs_gaussian_supervised_training(kwargs):
    with pytest.raises(ValueError, match="--noise-input"):
        TrainConfig(model=ModelConfig(noise_input=True), epochs=1, **kwargs)


def test_restore_estimates_each_image_level_and_packing_keeps_it():
    model = level_model()
    rng = np.random.default_rng(0)
    clean = photo()[200:248, 200:248].astype(float)  # camera.png: the coat's edge and the grass
    images = [np.clip(clean + rng.normal(0, s, clean.shape), 0, 255).astype(np.uint8) for s in (5, 25, 50)]
    packed = restore_arrays(model, images, stride=3)
    for image, out in zip(images, packed):
        alone = restore_array(model, image, stride=3)
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 1
    # told one level for all: the level image 0 was estimated at, so image 0 comes out as before and
    # image 2 (σ 50) is restored as if it had image 0's light noise
    first = noise_level_of(torch.from_numpy(images[0]).float().div(255).reshape(1, 1, 48, 48))
    told = restore_arrays(model, images, stride=3, noise_level=first)
    assert np.abs(told[0].astype(int) - packed[0].astype(int)).max() <= 1
    assert np.abs(told[2].astype(int) - packed[2].astype(int)).max() > 1


def test_the_estimate_follows_the_noise_on_a_photograph_through_clipping():
    clean = photo()[160:288, 160:288].astype(float)  # camera.png: the black coat clips noise at 0
    rng = np.random.default_rng(1)
    for sigma in (10, 25, 50):
        noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).round().astype(np.uint8)
        batch = torch.from_numpy(noisy).float().div(255).reshape(1, 1, *noisy.shape)
        assert noise_level_of(batch) == pytest.approx(sigma, rel=0.1)
    # the plain MAD reads the clipped noise as weaker (this crop: ~39 for 50)
    assert estimate_sigma(batch[0]) * 255 < 0.85 * 50


def test_the_estimate_of_a_clean_or_tiny_image():
    clean = torch.tensor(photo()[160:288, 160:288]).float().div(255)[None]
    assert noise_level(clean) * 255 < 5
    assert noise_level(torch.zeros(1, 64, 64)) == 0.0
    assert noise_level(torch.rand(1, 1, 1)) == 0.0  # no 2x2 block: nothing to measure
    assert noise_level(torch.rand(3, 8, 8)) > 0  # too few blocks to refine: the plain MAD


def test_fine_tuning_a_model_into_a_level_model_starts_from_exactly_it(tmp_path):
    plain = level_model(noise_input=False)
    ckpt.save(ckpt.checkpoint_state(plain, plain.config), str(tmp_path / "plain"))
    cfg = TrainConfig(model=ModelConfig(noise_input=True), epochs=1, init=str(tmp_path / "plain"))
    cfg, weights = init_weights(cfg)
    assert cfg.model.noise_input and cfg.model.patch_size == 6
    tuned = build_model(cfg.model)
    tuned.load_state_dict(weights)
    x = torch.rand(5, 36)
    with torch.no_grad():
        assert torch.allclose(tuned(x, level=torch.rand(5)), plain(x), atol=1e-6)


def test_the_restore_actor_passes_the_level_it_was_given(tmp_path):
    from raeae.stages import ModelStage, decode_batch
    from raeae.storage import StorageConfig
    from test_stages import listing, raeae_model_id

    model = level_model()
    ckpt.save(ckpt.checkpoint_state(model, model.config), str(tmp_path / "m"))
    folder = tmp_path / "in"
    folder.mkdir()
    noisy = np.clip(photo()[:40, :40] + np.random.default_rng(0).normal(0, 20, (40, 40)), 0, 255).astype(np.uint8)
    (folder / "a.png").write_bytes(png_bytes(noisy))
    decoded = decode_batch(listing(folder), str(folder), StorageConfig(), max_pixels=10**6)

    def restored(level):
        stage = ModelStage(str(tmp_path / "m"), raeae_model_id(tmp_path / "m"), StorageConfig(), stride=3,
                           tile_batch=64, threads=1, noise_level=level)
        row = stage(decoded).to_pylist()[0]
        return np.frombuffer(row["pixels"], np.uint8).reshape(40, 40)

    assert np.array_equal(restored(None), restore_array(model, noisy, stride=3))  # estimated, as restore_image
    assert np.array_equal(restored(50.0), restore_array(model, noisy, stride=3, noise_level=50.0))
    assert not np.array_equal(restored(50.0), restored(None))


def test_an_opponent_colour_model_tells_each_plane_its_own_level():
    model = level_model(channels=3)
    x = torch.rand(2, 3 * 36)
    seen = []
    hook = model.encoder[0].register_forward_pre_hook(lambda _, args: seen.append(args[0][:, -1].clone()))
    with torch.no_grad():
        model(x, level=torch.tensor([10.0, 40.0]) / 255)
    hook.remove()
    # rows are image-major, planes luma, red-blue, green-magenta: white noise σ has std σ·|row| in each
    gains = torch.tensor([(1 / 3) ** 0.5, 0.5 ** 0.5, (6 / 16) ** 0.5])
    expected = torch.cat([10 * gains, 40 * gains]) / 25
    assert torch.allclose(seen[0], expected, atol=1e-5)


def test_a_gray_image_in_a_colour_model_tells_the_luma_plane_all_of_its_noise():
    model = level_model(channels=3)
    noisy = np.clip(photo()[:48, :48] + np.random.default_rng(0).normal(0, 20, (48, 48)), 0, 255).astype(np.uint8)
    sigma = noise_level_of(torch.from_numpy(noisy.copy()).float().div(255)[None, None])
    seen = []
    hook = model.encoder[0].register_forward_pre_hook(lambda _, args: seen.append(args[0][:, -1].clone()))
    restore_array(model, noisy, stride=3)
    hook.remove()
    # the gray noise is the same in R, G and B: all of it is in luma (rows 0, 3, 6, ...), none in chroma
    assert float(seen[0][0]) == pytest.approx(sigma / 25, rel=1e-4)


def torch_noise_level(image: torch.Tensor, rounds: int = 3, min_blocks: int = 64) -> float:
    """The estimator as it was written in torch (before it moved to numpy for speed): the oracle."""
    _, h, w = image.shape
    x = image[:, : h // 2 * 2, : w // 2 * 2].float()
    a, b, c, d = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    if a.numel() == 0:
        return 0.0
    mad = lambda v: float(v.abs().median()) / 0.6745 if v.numel() else 0.0  # noqa: E731
    hh, lh, hl, mean = (a - b - c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a + b + c + d) / 4
    unclipped = ((torch.stack([a, b, c, d]) > 0) & (torch.stack([a, b, c, d]) < 1)).all(0)
    sigma = mad(hh[unclipped]) if int(unclipped.sum()) >= min_blocks else mad(hh)
    for _ in range(rounds):
        keep = unclipped & (mean > 2 * sigma) & (mean < 1 - 2 * sigma) & (lh.abs() < 2 * sigma) & (hl.abs() < 2 * sigma)
        if int(keep.sum()) < min_blocks:
            break
        sigma = mad(hh[keep])
    return sigma


def test_the_numpy_estimate_equals_the_torch_one_exactly():
    rng = np.random.default_rng(5)
    images = [photo(name) for name in ("camera.png", "astronaut.png", "coffee.png")]
    for k in range(40):
        clean = images[k % 3]
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        crop = clean[:h, :w]
        sigma = float(rng.choice([0, 5, 25, 60]))
        noisy = np.clip(np.round(crop + rng.standard_normal(crop.shape) * sigma), 0, 255).astype(np.uint8)
        x = torch.from_numpy(noisy).float().div(255)
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)  # a non-contiguous view, as restore has it
        assert noise_level(x) == torch_noise_level(x), (h, w, sigma)
    assert noise_level(torch.zeros(3, 1, 1)) == 0.0
