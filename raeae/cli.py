"""The ``raeae`` command: thin subcommands that parse flags, build a config and call one library function.

Every user mistake (bad flag value, missing input, unreadable checkpoint, bad credentials) ends in one
line on stderr and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from raeae.checkpoint import CheckpointError
from raeae.cliutil import add_config_flags, config_from_args
from raeae.storage import StorageError

# Errors that are the user's to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, StorageError, CheckpointError, FileNotFoundError, PermissionError)


def _train(args: argparse.Namespace) -> int:
    from raeae.train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args)
    result = train(cfg)
    print(f"raeae train: best epoch {result.best_epoch}: validation PSNR noisy {result.best_val_psnr_noisy:.2f} dB"
          f" -> model {result.best_val_psnr:.2f} dB (+{result.best_val_psnr - result.best_val_psnr_noisy:.2f} dB)")
    print(f"raeae train: fit {result.fit_s:.1f} s, of which training loops {result.loop_s:.1f} s; "
          f"checkpoint: {result.checkpoint_uri}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from raeae.restore import RestoreConfig, restore

    summary = restore(config_from_args(RestoreConfig, args))
    return 0 if summary["rows"] == summary["files"] else 1


def _nightly(args: argparse.Namespace) -> int:
    from raeae.nightly import NightlyConfig, nightly

    nightly(config_from_args(NightlyConfig, args))
    return 0


def _export(args: argparse.Namespace) -> int:
    from raeae.export import ExportConfig, export

    export(config_from_args(ExportConfig, args))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from raeae.evaluate import EvaluateConfig, evaluate

    evaluate(config_from_args(EvaluateConfig, args))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from raeae.demo import DemoConfig, demo

    demo(config_from_args(DemoConfig, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from raeae.demo import DemoConfig
    from raeae.evaluate import EvaluateConfig
    from raeae.export import ExportConfig
    from raeae.nightly import NightlyConfig
    from raeae.restore import RestoreConfig
    from raeae.train import TrainConfig

    parser = argparse.ArgumentParser(prog="raeae", description="Distributed batch image restoration with a "
                                     "dense denoising autoencoder (Ray Train + Ray Data).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = [
        ("train", TrainConfig, _train, "train a denoising autoencoder on Ray Train"),
        ("restore", RestoreConfig, _restore, "restore a collection of images into Parquet with Ray Data"),
        ("nightly", NightlyConfig, _nightly, "restore only what is new in an archive, exactly once"),
        ("export", ExportConfig, _export, "write restored images from Parquet back to image files"),
        ("evaluate", EvaluateConfig, _evaluate, "PSNR/SSIM of a model against classical denoisers"),
        ("demo", DemoConfig, _demo, "the main job end to end on embedded sample photographs"),
    ]
    for name, cls, fn, help_text in commands:
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip().splitlines()[0])
        # nightly reads --archive; its nested restore settings take their input from there
        add_config_flags(p, cls, skip=("input",) if cls is NightlyConfig else ())
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"raeae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raeae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
