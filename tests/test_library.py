"""The library is the product: `raeae.train/restore/nightly` take the settings their commands take, and
a request resolves to the same config from Python as from the command line."""

from __future__ import annotations

import shlex

import pytest

import raeae
from raeae.cli import build_parser, train_config_from_args
from raeae.train_config import Preset, resolve

REQUESTS = [  # (preset, the flags of `raeae train`)
    ("auto", "--data photos/ --output m --max-minutes 10"),
    ("auto", "--data photos/ --output m --sigma 0 --sigma-max 55 --lr 1e-4"),
    ("auto", "--data photos/ --output m --noise jpeg --sigma 5 --sigma-max 30 --init builtin:color --channels 3"),
    ("auto", "--data photos/ --output m --noise poisson --peak 10 --peak-max 60 --no-noise-input"),
    ("auto", "--data noisy/ --output m --self-supervised --max-minutes 5"),
    ("photo", "--data photos/ --output m --epochs 3 --patch-size 17"),
    ("digits", "--data digits/ --output m --sigma 76 --epochs 1"),
    ("archive", "--data noisy/ --output m --scheme blind-spot"),
]


def settings_of(flags: str) -> dict:
    """The same request as keyword arguments: each flag's name with underscores, its value as Python's."""
    out, words = {}, shlex.split(flags)
    i = 0
    while i < len(words):
        name = words[i][2:].replace("-", "_")
        if name.startswith("no_"):
            out[name[3:]], i = False, i + 1
        elif i + 1 == len(words) or words[i + 1].startswith("--"):
            out[name], i = True, i + 1
        else:
            value = words[i + 1]
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    pass
            out[name], i = value, i + 2
    return out


@pytest.mark.parametrize("preset, flags", REQUESTS)
def test_the_cli_and_the_library_resolve_a_request_to_the_same_config(preset, flags):
    chosen_cli, from_cli = train_config_from_args(build_parser(only="train").parse_args(
        ["train", "--preset", preset, *shlex.split(flags)]))
    chosen_lib, from_lib = resolve(preset, **settings_of(flags))
    assert chosen_cli is chosen_lib and from_cli == from_lib


def test_the_recipe_rules_live_in_the_library():
    preset, cfg = resolve(data="photos/", output="m", max_minutes=3)
    assert preset is Preset.PHOTO and cfg.epochs == 0 and cfg.max_minutes == 3  # a budget alone: no epoch limit
    assert resolve(data="photos/", output="m", sigma=0, sigma_max=55)[1].model.noise_input  # blind: told σ
    assert not resolve(data="photos/", output="m", sigma=25)[1].model.noise_input  # one σ: nothing to tell
    jpeg = resolve(data="photos/", output="m", noise="jpeg", sigma=5, sigma_max=30)[1]
    assert jpeg.model.jpeg_input and jpeg.model.noise_input
    assert resolve(data="noisy/", output="m", self_supervised=True)[0] is Preset.ARCHIVE


def test_unknown_settings_fail_with_one_line():
    with pytest.raises(ValueError, match="unknown TrainConfig setting.*: patchsize"):
        resolve(data="photos/", output="m", patchsize=13)
    with pytest.raises(ValueError, match="unknown RestoreConfig setting.*: inptu"):
        raeae.restore(inptu="photos/", output="out")


def test_the_package_top_offers_the_library():
    assert set(raeae.__all__) >= {"train", "restore", "nightly", "load_model", "restore_image", "read_restored",
                                  "TrainConfig", "RestoreConfig", "NightlyConfig"}
    for name in raeae.__all__:
        assert getattr(raeae, name).__doc__, name
    assert raeae.TrainConfig is __import__("raeae.train_config").train_config.TrainConfig
