import os

import pytest
import torch

import raeae
from raeae import checkpoint as ckpt
from raeae.model import ModelConfig, build_model


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_round_trip_is_self_describing(tmp_path):
    cfg = ModelConfig(patch_size=5, channels=3, hidden=(7,), latent=3, residual=True)
    model = build_model(cfg)
    ckpt.save(ckpt.checkpoint_state(model, cfg, metrics={"val_psnr": 30.5}), str(tmp_path))
    loaded = raeae.load_model(str(tmp_path))
    assert loaded.config == cfg and not loaded.training
    x = torch.rand(4, cfg.features)
    assert torch.equal(loaded(x), model(x))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["metrics"]["val_psnr"] == 30.5
    assert raeae.load_model(str(tmp_path / "model.pt")).config == cfg


def test_pickled_code_is_refused(tmp_path):
    cfg = ModelConfig(patch_size=2, hidden=(2,), latent=2)
    state = ckpt.checkpoint_state(build_model(cfg), cfg, payload=Evil())
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="pickled code"):
        raeae.load_model(str(tmp_path))


@pytest.mark.parametrize("content,words", [(b"garbage bytes", "not a readable checkpoint"),
                                           (None, "no checkpoint there")])
def test_missing_or_corrupt_checkpoints_give_one_clear_error(tmp_path, content, words):
    if content is not None:
        (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=words):
        raeae.load_model(str(tmp_path))


def test_a_plain_state_dict_is_not_a_raeae_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a raeae checkpoint"):
        raeae.load_model(str(tmp_path))


def test_model_id_is_the_hash_of_the_file():
    assert ckpt.model_id(b"a") == ckpt.model_id(b"a") != ckpt.model_id(b"b")
    assert len(ckpt.model_id(b"a")) == 16
