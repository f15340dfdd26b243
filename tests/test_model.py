import pytest
import torch

from raeae.model import (Activation, ModelConfig, Head, OutputLinear, build_model, parameter_count, photo_config,
                         seed_config)


def test_seed_network_shape_and_range():
    cfg = seed_config()
    model = build_model(cfg)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 128), (128, 128), (128, 784)]
    assert parameter_count(model) == 784 * 128 + 128 + 128 * 128 + 128 + 128 * 784 + 784
    with torch.no_grad():
        y = model(torch.rand(5, 784) * 10 - 5)
    assert y.shape == (5, 784) and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("channels,patch", [(1, 5), (3, 8), (1, 1)])
def test_shapes_for_patch_sizes_and_channels(channels, patch):
    cfg = ModelConfig(patch_size=patch, channels=channels, hidden=(16, 12), latent=4, decoder_hidden=(12,),
                      activation=Activation.GELU, head=Head.LINEAR)
    model = build_model(cfg)
    assert model(torch.rand(3, cfg.features)).shape == (3, channels * patch * patch)


def test_residual_output_is_input_minus_predicted_noise():
    cfg = ModelConfig(patch_size=4, hidden=(8,), latent=8, residual=True)
    model = build_model(cfg)
    x = torch.rand(6, 16)
    assert torch.allclose(model(x), x - model(x, logits=True))
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.zero_()
    assert torch.equal(model(x), x)


def test_large_inference_passes_pad_the_output_layer_and_give_the_plain_layers_values():
    """13×13 patches have 169 outputs. An inference pass of OutputLinear.MIN_ROWS rows multiplies
    a weight padded to 176 rows (a faster GEMM; see OutputLinear) and drops the padding: the values
    are the plain layer's, and the parameters (so checkpoints) stay 169 wide."""
    torch.manual_seed(0)
    model = build_model(photo_config()).eval()
    last = model.decoder[-1]
    assert isinstance(last, OutputLinear) and tuple(last.weight.shape) == (169, 1024)
    assert model.state_dict()["decoder.2.weight"].shape == (169, 1024)
    h = torch.rand(OutputLinear.MIN_ROWS, 1024)
    with torch.no_grad():
        padded, small = last(h), last(h[:OutputLinear.MIN_ROWS - 1])
    assert padded.shape == (len(h), 169) and padded.stride() == (176, 1)  # a view of the padded product
    assert small.stride() == (169, 1)  # below MIN_ROWS: the plain layer
    plain = torch.nn.functional.linear(h, last.weight, last.bias).detach()
    torch.testing.assert_close(padded, plain)
    with torch.no_grad():  # any leading shape, as nn.Linear takes: one vector is one row, never 1024
        assert last(h[0]).shape == (169,) and last(h.reshape(2, -1, 1024)).shape == (2, len(h) // 2, 169)
    x = torch.rand(OutputLinear.MIN_ROWS, 169)
    with torch.no_grad():
        restored = model(x)
    torch.testing.assert_close(restored, model(x).detach())  # grad enabled (training): the plain path


def test_output_bias_init_makes_untrained_net_predict_the_mean():
    cfg = ModelConfig(patch_size=2, hidden=(4,), latent=4)
    model = build_model(cfg)
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
    mean = torch.tensor([0.1, 0.5, 0.7, 0.9])
    model.init_output_bias(mean)
    assert torch.allclose(model(torch.rand(2, 4)), mean.expand(2, 4), atol=1e-6)


def test_config_round_trip_through_plain_types():
    cfg = ModelConfig(patch_size=17, channels=3, hidden=(64, 32), latent=16, decoder_hidden=(32, 64),
                      activation=Activation.TANH, head=Head.LINEAR, residual=True)
    d = cfg.to_dict()
    assert all(isinstance(v, (int, str, bool, list)) for v in d.values())
    assert ModelConfig.from_dict(d) == cfg


@pytest.mark.parametrize("kwargs", [{"patch_size": 0}, {"channels": 2}, {"latent": 0}, {"hidden": (0,)}])
def test_invalid_model_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)
