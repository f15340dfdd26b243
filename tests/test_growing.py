"""Growing a model with --init: hidden layers added after its own start as the identity, so a deeper
fine-tune starts from exactly what the given model restores."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from raeae.corrupt import Noise, NoiseConfig
from raeae.jpeg import context
from raeae.model import Activation, ModelConfig, build_model
from raeae.train_config import TrainConfig
from raeae.training import _deepened, deepen, init_weights


def test_a_deeper_fine_tune_starts_from_exactly_the_given_model():
    cfg = TrainConfig(data="x", output="y", init="builtin:jpeg", noise=NoiseConfig(noise=Noise.JPEG),
                      model=replace(TrainConfig().model, hidden=(1024, 1024), decoder_hidden=(1024, 1024, 1024)))
    deeper_cfg, weights = init_weights(cfg)
    assert deeper_cfg.model.hidden == (1024, 1024) and deeper_cfg.model.decoder_hidden == (1024, 1024, 1024)
    deeper = build_model(deeper_cfg.model)
    deeper.load_state_dict(weights)  # every parameter is there, none left over
    from raeae.checkpoint import load_model

    base = load_model("builtin:jpeg").float()
    x = torch.rand(32, 3 * 169)
    ctx = context(2.5, torch.arange(32) * 4, torch.zeros(32, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(deeper(x, level=0.05, jpeg=ctx), base(x, level=0.05, jpeg=ctx))


def small(**kw) -> ModelConfig:
    return ModelConfig(**{"patch_size": 5, "hidden": (16,), "latent": 8, "decoder_hidden": (16,), **kw})


def test_only_layers_that_repeat_the_last_width_grow_a_model():
    have = small()
    assert _deepened(have, replace(have, hidden=(16, 16))).hidden == (16, 16)
    assert _deepened(have, replace(have, hidden=(32,))) == have  # other widths: the checkpoint's network
    assert _deepened(have, replace(have, hidden=(16, 32))) == have
    assert _deepened(replace(have, decoder_hidden=()), replace(have, decoder_hidden=(8,))).decoder_hidden == ()
    with pytest.raises(ValueError, match="relu"):
        _deepened(small(activation=Activation.TANH), small(activation=Activation.TANH, hidden=(16, 16)))


def test_deepening_a_random_relu_network_keeps_its_function():
    torch.manual_seed(0)
    have, want = small(), small(hidden=(16, 16, 16), decoder_hidden=(16, 16))
    base = build_model(have)
    grown = build_model(want)
    grown.load_state_dict(deepen(base.state_dict(), have, want))
    x = torch.rand(10, 25)
    with torch.no_grad():
        assert torch.allclose(grown(x), base(x), atol=1e-6)
