"""Every command has help; every user mistake is one line and a non-zero exit, not a traceback."""

import os
import subprocess
import sys

import pytest

import raeae
from raeae.cli import build_parser, main
from raeae.data import copy_samples

COMMANDS = list(build_parser()._subparsers._group_actions[0].choices)


def test_the_commands_are_the_documented_ones():
    assert COMMANDS == ["train", "restore", "nightly", "archive", "export", "evaluate", "demo", "samples", "info",
                        "report"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"raeae {raeae.__version__}"


def test_every_command_is_listed_in_the_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_for_every_flag(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "[default:" in action.help, (command, action.dest)
            assert action.option_strings[0] in out, (command, action.dest)


def test_train_has_the_documented_flags():
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {s for a in sub._actions for s in a.option_strings}
    for f in ["--data", "--output", "--epochs", "--max-minutes", "--patch-size", "--stride", "--hidden", "--latent",
              "--residual", "--loss", "--noise", "--sigma", "--amount", "--workers", "--gpu", "--batch-size", "--lr",
              "--run-name", "--seed", "--self-supervised", "--scheme", "--noise-sigma", "--recorrupt-alpha"]:
        assert f in flags


@pytest.mark.parametrize("argv,words", [
    (["train", "--data", "x", "--output", "y", "--sigma", "-5"], "sigma must be >= 0"),
    (["train", "--data", "x", "--output", "y", "--patch-size", "8", "--stride", "9"], "stride must be in"),
    (["train", "--data", "x", "--output", "y", "--loss", "bce", "--residual"], "bce needs a sigmoid"),
    (["train", "--output", "y"], "--data is required"),
    (["train", "--data", "/nonexistent/raeae", "--output", "y"], "no such file"),
    (["restore", "--model", "/nonexistent/ckpt", "--input", "x", "--output", "y"], "no checkpoint there"),
    (["restore", "--model", "builtin:nope", "--input", "x", "--output", "y"], "no such bundled model"),
    (["restore", "--model", "x", "--output", "y"], "--input is required"),
    (["restore", "--model", "m", "--input", "x", "--output", "y", "--batch-size", "0"], "batch_size must be >= 1"),
    (["info", "--model", "/nonexistent/ckpt"], "no checkpoint there"),
    (["info", "--model", "builtin:nope"], "no such bundled model"),
])
def test_bad_arguments_fail_fast_with_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0]


def test_more_workers_than_training_images_fails_fast_with_one_line(tmp_path, capsys):
    """Each rank trains on its own share of the files, so every rank needs one (checked before Ray starts).
    Four photographs of its own."""
    photos = tmp_path / "photos"
    copy_samples(photos, ("camera.png", "coins.png", "astronaut.png", "chelsea.png"))
    assert main(["train", "--data", str(photos), "--output", str(tmp_path / "m"), "--workers", "4",
                 "--val-fraction", "0.3", "--storage-path", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "for 4 workers: each worker needs at least one" in err[0]
    assert not (tmp_path / "runs").exists()


def test_unknown_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--noise", "purple"])
    assert e.value.code == 2


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "raeae.cli", "--help"], capture_output=True, text=True, check=True)
    assert "restore" in out.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`raeae info | head -1`: once the reader has gone, a write fails; exit 141 as SIGPIPE would, no traceback."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line is written
    with os.fdopen(w, "wb") as stdout:
        proc = subprocess.run([sys.executable, "-m", "raeae.cli", "info"], stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.parametrize(("argv", "preset", "batch", "lr", "self_supervised"), [
    (["--data", "photos/"], "photo", 256, 3e-4, False),
    (["--data", "scans/", "--self-supervised"], "archive", 1024, 6e-4, True),
    (["--data", "scans/", "--self-supervised", "--batch-size", "256"], "archive", 256, 6e-4, True),
    (["--data", "scans/", "--preset", "archive"], "archive", 1024, 6e-4, True),
    (["--data", "scans/", "--self-supervised", "--preset", "photo"], "photo", 256, 3e-4, True),
])
def test_train_takes_its_recipe_from_the_preset_and_flags_on_top(argv, preset, batch, lr, self_supervised):
    from raeae.cli import train_config_from_args

    chosen, cfg = train_config_from_args(build_parser().parse_args(["train", "--output", "m", *argv]))
    assert (chosen.value, cfg.batch_size, cfg.lr, cfg.self_supervised) == (preset, batch, lr, self_supervised)


@pytest.mark.parametrize(("argv", "noise_input"), [
    (["--sigma", "0", "--sigma-max", "55"], True),  # blind Gaussian: told the level by default
    (["--sigma", "0", "--sigma-max", "55", "--no-noise-input"], False),
    (["--sigma", "25"], False),  # one σ: nothing to tell
    (["--sigma", "25", "--noise-input"], True),
    (["--noise", "salt-pepper"], False),
    (["--self-supervised", "--sigma", "0", "--sigma-max", "55"], False),
])
def test_blind_gaussian_training_learns_the_noise_level_unless_told_not_to(argv, noise_input):
    from raeae.cli import train_config_from_args

    _, cfg = train_config_from_args(build_parser().parse_args(["train", "--output", "m", "--data", "photos/", *argv]))
    assert cfg.model.noise_input is noise_input


@pytest.mark.parametrize("command", ["train", "restore", "nightly", "archive"])
def test_help_says_what_a_flag_does_and_leaves_measurements_to_results(command, capsys):
    """Measurements live in bench/RESULTS.md ("Measurements behind the defaults"), not in --help, where
    they drifted; "seed" means a random seed only."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert " dB" not in text and "measured:" not in text.lower()
    assert "seed net" not in text and "(seed:" not in text
