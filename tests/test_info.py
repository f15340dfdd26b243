"""`raeae info`: a checkpoint describes itself, bundled or freshly trained, from the file alone."""

import json

import pytest

from raeae import checkpoint as ckpt
from raeae.cli import main
from raeae.info import describe, info_lines, learned_text, lineage, noise_text, training_text
from raeae.model import ModelConfig, build_model


def save_checkpoint(directory, cfg: ModelConfig, **extra) -> str:
    ckpt.save(ckpt.checkpoint_state(build_model(cfg), cfg, **extra), str(directory))
    return str(directory)


def test_builtin_auto_describes_both_bundled_models_with_their_release_record(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    gray, color = out.split("builtin:color: ")
    color, jpeg = color.split("builtin:jpeg: ")
    jpeg, low = jpeg.split("builtin:jpeg-low: ")
    assert gray.startswith("builtin:gray: model id ")
    assert "to undo JPEG quality 50-95, after gaussian σ 5-30 on 50% of the images" in jpeg
    assert "to undo JPEG quality 10-50, no noise before it" in low and "jpeg 75" not in low
    assert "jpeg 75 33.82 -> " in jpeg and "jpeg 20 28.15 -> " in low
    for text in (jpeg, low):
        assert "σ=jpeg" not in text
        assert "JPEG-damaged images at stride 4 on their block grid" in text
    assert "169+σ->[1024]->512->[1024]->169 (1,398,441 parameters)" in gray
    assert "on each of 3 opponent colour planes" in color and "opponent" not in gray
    for text in (gray, color):
        assert "to undo gaussian σ 0-55 (blind), from clean images" in text
        assert "starting from its previous release" in text and "training steps" in text
        assert "σ=25 " in text and "made by     .venv/bin/raeae train" in text
        assert "stride 6" in text


def test_a_bundled_models_lineage_follows_each_release_to_the_one_it_started_from():
    (d,) = describe("builtin:gray")
    chain = lineage(d["header"]["provenance"])
    assert len(chain) >= 2 and not chain[-1].get("init")  # the first release trained from scratch
    assert all(p["init"] for p in chain[:-1])
    total = sum(p["train_minutes"] for p in chain)
    assert f"the last of {len(chain)} training steps, {total:.0f} min in all" in training_text(d["header"], d["model"])


def test_a_trained_checkpoint_says_what_it_learned_how_long_and_its_best_epoch(tmp_path):
    cfg = ModelConfig(patch_size=8, hidden=(32,), latent=16, decoder_hidden=(32,), residual=True)
    history = [{"epoch": e, "epoch_s": 30.0, "val_psnr": 20.0 + e, "val_psnr_noisy": 18.0} for e in (1, 2, 3)]
    uri = save_checkpoint(tmp_path, cfg, noise={"noise": "salt-pepper", "amount": 0.05},
                          train_config={"data": "s3://bucket/clean/", "init": ""}, metrics=history[1],
                          history=history, inference={"stride": 2})
    (d,) = describe(uri)
    assert d["model"] == uri and d["stride"] == 2 and d["model_id"] == ckpt.model_id((tmp_path / "model.pt").read_bytes())
    text = "\n".join(info_lines(d))
    assert "64->[32]->16->[32]->64 (" in text and "told each image" not in text
    assert "to undo salt-pepper, 5% of the pixels, from clean images" in text
    assert "3 epoch(s) in 1.5 min on s3://bucket/clean/, from scratch" in text
    assert "PSNR 22.00 dB (noisy 18.00) at epoch 2" in text
    assert "measured" not in text and "made by" not in text  # no release record: not a bundled model


@pytest.mark.parametrize("metrics, words", [
    ({"recorrupt": 1, "noise_sigma": 25.2, "val_ss_loss": 0.01}, "self-supervised: recorrupt, noise σ 25.2 estimated"),
    ({"recorrupt": 0, "val_ss_loss": 0.01}, "self-supervised: blind-spot masking"),
])
def test_a_self_supervised_checkpoint_names_the_scheme_it_learned_with(metrics, words):
    header = {"train_config": {"self_supervised": True}, "metrics": metrics}
    assert words in learned_text(header)


@pytest.mark.parametrize("noise, words", [
    ({"noise": "gaussian", "sigma": 25.0, "sigma_max": 0.0}, "gaussian σ 25"),
    ({"noise": "gaussian", "sigma": 5.0, "sigma_max": 50.0}, "gaussian σ 5-50 (blind)"),
    ({"noise": "mask", "amount": 0.2}, "mask, 20% of the pixels"),
    ({"noise": "block", "block": 8}, "block masks of 8x8 pixels"),
    ({"noise": "jpeg", "sigma": 5.0, "sigma_max": 30.0, "quality": 10, "quality_max": 95, "noise_share": 0.5},
     "JPEG quality 10-95, after gaussian σ 5-30 on 50% of the images"),
    ({"noise": "jpeg", "sigma": 5.0, "sigma_max": 30.0, "quality": 10, "quality_max": 50, "noise_share": 0.0},
     "JPEG quality 10-50, no noise before it"),
])
def test_noise_in_words(noise, words):
    assert noise_text(noise) == words


def test_json_lists_everything_but_the_weights(tmp_path, capsys):
    cfg = ModelConfig(patch_size=4, channels=3, hidden=(8,), latent=4, decoder_hidden=(8,))
    uri = save_checkpoint(tmp_path, cfg, metrics={"epoch": 1, "val_psnr": 25.0})
    assert main(["info", "--model", uri, "--json"]) == 0
    (d,) = json.loads(capsys.readouterr().out)
    assert d["header"]["model_config"]["channels"] == 3 and "model" not in d["header"]
    assert d["bytes"] > 0 and d["network"].startswith("16->[8]->4->[8]->16 on each of 3 opponent colour planes")
