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


def _strip_tensors(value):
    """A state dict with every tensor replaced by its storage type's name, to compare with read_header."""
    if isinstance(value, dict):
        return {k: _strip_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_tensors(v) for v in value)
    if isinstance(value, torch.Tensor):
        return "tensor"
    return value


def _header_without_tensors(value):
    if isinstance(value, dict):
        return {k: _header_without_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_header_without_tensors(v) for v in value)
    return "tensor" if isinstance(value, ckpt._Tensor) else value


@pytest.mark.parametrize("name", ["builtin:gray", "builtin:color", "trained"])
def test_read_header_matches_torch_load_but_the_weights(tmp_path, name):
    if name == "trained":  # fp32 weights and an optimizer-free training checkpoint's extras
        cfg = ModelConfig(patch_size=5, channels=3, hidden=(7,), latent=3, residual=True)
        ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg, metrics={"val_psnr": 30.5},
                                        train_config={"lr": 3e-4, "hidden": (7,)}), str(tmp_path))
        data = (tmp_path / "model.pt").read_bytes()
    else:
        data = ckpt.read_checkpoint_bytes(name)
    header = ckpt.read_header(data, name)
    assert _header_without_tensors(header) == _strip_tensors(ckpt.parse(data, name))
    assert ckpt.recommended_stride(header) == ckpt.recommended_stride(ckpt.parse(data, name))


def test_read_header_refuses_what_parse_refuses(tmp_path):
    cfg = ModelConfig(patch_size=2, hidden=(2,), latent=2)
    torch.save(ckpt.checkpoint_state(build_model(cfg), cfg, payload=Evil()), tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="pickled code"):
        ckpt.read_header((tmp_path / "evil.pt").read_bytes(), "evil.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a raeae checkpoint"):
        ckpt.read_header((tmp_path / "plain.pt").read_bytes(), "plain.pt")
    good = ckpt.read_checkpoint_bytes("builtin:gray")
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # a flipped byte inside the weights: the zip's CRC catches it
    for bad in (b"", b"garbage bytes", good[: len(good) // 2], bytes(damaged)):
        with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
            ckpt.read_header(bad, "bad.pt")


def test_restore_and_nightly_drivers_do_not_import_torch():
    """The driver checks checkpoints and builds its config without torch (~1.5 s before the first
    row); only the model actors load it."""
    import subprocess
    import sys

    code = ("import sys; from raeae.cli import build_parser; from raeae import checkpoint as ckpt\n"
            "build_parser('restore'); build_parser('nightly'); import raeae.restoring, raeae.incremental\n"
            "[ckpt.read_header(b) for b in ckpt.read_models(ckpt.AUTO)]\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
