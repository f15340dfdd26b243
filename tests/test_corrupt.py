import pytest
import torch

from raeae.corrupt import Noise, NoiseConfig, block_mask, corrupt, gaussian, pixel_mask, salt_pepper


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_sigma_is_on_the_0_255_scale():
    x = torch.full((64, 1, 32, 32), 0.5)
    noise = gaussian(x, 25.0, gen()) - x
    assert abs(float(noise.std()) * 255 - 25.0) < 0.3
    assert abs(float(noise.mean()) * 255) < 0.3


def test_blind_sigma_range_varies_per_sample_within_bounds():
    x = torch.full((400, 1, 16, 16), 0.5)
    stds = (gaussian(x, 5.0, gen(), sigma_max=50.0) - x).flatten(1).std(1) * 255
    assert 4.0 < float(stds.min()) < 9.0 and 46.0 < float(stds.max()) < 54.0
    assert 24.0 < float(stds.mean()) < 31.0


@pytest.mark.parametrize("amount", [0.05, 0.3])
def test_salt_and_pepper_amount_and_balance(amount):
    x = torch.full((32, 1, 32, 32), 0.5)
    y = salt_pepper(x, amount, gen())
    hit = y != 0.5
    assert abs(float(hit.float().mean()) - amount) < 0.01
    assert abs(float((y[hit] == 1).float().mean()) - 0.5) < 0.03


def test_pixel_mask_zeroes_the_requested_fraction():
    x = torch.full((32, 3, 32, 32), 0.7)
    y = pixel_mask(x, 0.2, gen())
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.01
    assert torch.all((y == 0) | (y == x))


def test_block_mask_zeroes_exactly_one_block_per_sample():
    x = torch.ones(10, 2, 20, 24)
    y = block_mask(x, 6, gen())
    assert torch.all((y == 0).flatten(1).sum(1) == 2 * 6 * 6)
    assert torch.equal(block_mask(torch.ones(1, 1, 3, 3), 8, gen()), torch.zeros(1, 1, 3, 3))


def test_corruption_is_reproducible_from_a_seed_and_fresh_otherwise():
    x = torch.rand(4, 1, 8, 8)
    cfg = NoiseConfig(noise=Noise.GAUSSIAN, sigma=30)
    assert torch.equal(corrupt(x, cfg, gen(1)), corrupt(x, cfg, gen(1)))
    g = gen(1)
    assert not torch.equal(corrupt(x, cfg, g), corrupt(x, cfg, g))


def test_clip_keeps_values_in_range_like_a_stored_image():
    x = torch.rand(8, 1, 16, 16)
    assert float(corrupt(x, NoiseConfig(sigma=80), gen()).min()) >= 0.0
    assert float(corrupt(x, NoiseConfig(sigma=80, clip=False), gen()).min()) < 0.0


@pytest.mark.parametrize("kwargs", [{"sigma": -1}, {"amount": 1.5}, {"block": 0}])
def test_invalid_noise_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        NoiseConfig(**kwargs)


# --- blind training: per-patch weights by noise level (--sigma-balance) ------------------------------

def test_sigma_weights_follow_each_patch_noise_level_with_mean_one():
    from raeae.losses import sigma_weights

    clean = torch.full((3000, 169), 0.5)
    sigmas = torch.tensor([10.0, 40.0, 0.0]).repeat(1000)
    noisy = clean + torch.randn(clean.shape, generator=gen()) * sigmas[:, None] / 255
    w = sigma_weights(noisy, clean, 1.0)
    assert abs(float(w.mean()) - 1.0) < 1e-5
    by_level = [float(w[i::3].mean()) for i in range(3)]
    assert abs(by_level[0] / by_level[1] - 4.0) < 0.15  # (25/10) / (25/40)
    assert abs(by_level[2] / by_level[0] - 2.0) < 0.01  # a clean patch counts as σ=5, not as infinitely important
    assert torch.allclose(sigma_weights(noisy, clean, 0.0), torch.ones(3000))


def test_weighted_loss_with_equal_weights_is_the_plain_mse():
    from raeae.model import build_model, seed_config
    from raeae.losses import loss_of
    from raeae.train_config import Loss

    model = build_model(seed_config(patch_size=4))
    noisy, clean = torch.rand(8, 16), torch.rand(8, 16)
    torch.testing.assert_close(loss_of(model, noisy, clean, Loss.MSE, torch.ones(8)), loss_of(model, noisy, clean, Loss.MSE))


def test_sigma_balance_needs_a_blind_gaussian_range():
    from raeae.train_config import TrainConfig

    TrainConfig(noise=NoiseConfig(sigma=0, sigma_max=55), sigma_balance=1.0)
    with pytest.raises(ValueError, match="needs --sigma-max"):
        TrainConfig(sigma_balance=1.0)
    with pytest.raises(ValueError, match="sigma_balance must be >= 0"):
        TrainConfig(noise=NoiseConfig(sigma=0, sigma_max=55), sigma_balance=-1.0)


def test_shot_noise_grows_with_brightness_and_its_level_is_told():
    from raeae.corrupt import corrupt_with_level

    x = torch.cat([torch.full((50, 1, 16, 16), 0.2), torch.full((50, 1, 16, 16), 0.8)])
    y, level = corrupt_with_level(x, NoiseConfig(noise=Noise.POISSON, peak=30.0, clip=False), gen())
    dark, bright = (y - x)[:50].std(), (y - x)[50:].std()
    assert float(dark) == pytest.approx((0.2 / 30) ** 0.5, rel=0.1)
    assert float(bright) == pytest.approx((0.8 / 30) ** 0.5, rel=0.1)
    assert torch.allclose(level[:50], torch.tensor((0.2 / 30) ** 0.5)) and torch.allclose(level[50:], torch.tensor((0.8 / 30) ** 0.5))
    assert abs(float(y.mean() - x.mean())) < 0.01  # unbiased
    _, varied = corrupt_with_level(torch.full((200, 1, 8, 8), 0.5), NoiseConfig(noise=Noise.POISSON, peak=10, peak_max=100), gen())
    assert float(varied.min()) < (0.5 / 80) ** 0.5 and float(varied.max()) > (0.5 / 12) ** 0.5


def test_jpeg_damage_is_not_made_on_patches():
    with pytest.raises(ValueError, match="whole images"):
        corrupt(torch.rand(2, 1, 8, 8), NoiseConfig(noise=Noise.JPEG), gen())


@pytest.mark.parametrize("kw, message", [(dict(quality=0), "quality"), (dict(quality=50, quality_max=40), "quality"),
                                         (dict(peak=0), "peak"), (dict(noise_share=1.5), "noise_share")])
def test_bad_damage_settings_fail_with_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        NoiseConfig(**kw)
