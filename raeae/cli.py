"""The ``raeae`` command: thin subcommands that parse flags, build a config and call one library function.

Every user mistake (bad flag value, missing input, unreadable checkpoint, bad credentials) ends in one
line on stderr and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

from raeae import __version__
from raeae.checkpoint import CheckpointError
from raeae.cliutil import add_config_flags, config_from_args
from raeae.cluster import RayConnectionError, disconnect
from raeae.storage import StorageError

# Errors that are the user's to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, StorageError, CheckpointError, FileNotFoundError, PermissionError, RayConnectionError)


def train_config_from_args(args: argparse.Namespace):
    """The training config a command line asks for: the flags given, resolved by the library's one
    recipe (:func:`raeae.train_config.resolve`), as ``raeae.train(**settings)`` resolves them."""
    from raeae.train_config import resolve

    settings = {k: v for k, v in vars(args).items() if k not in ("preset", "verbose", "func", "command")}
    return resolve(args.preset, **settings)


def _train(args: argparse.Namespace) -> int:
    from raeae.training import train

    preset, cfg = train_config_from_args(args)
    print(f"raeae train: preset {preset.value}")
    r = train(cfg, verbose=args.verbose)
    best = next((h for h in r.history if h["epoch"] == r.best_epoch), {})
    quality = (f"validation PSNR noisy {r.best_val_psnr_noisy:.2f} dB -> model {r.best_val_psnr:.2f} dB "
               f"(+{r.best_val_psnr - r.best_val_psnr_noisy:.2f} dB)" if "val_psnr" in best
               else f"self-supervised validation loss {best.get('val_ss_loss', float('nan')):.5f}")
    print(f"raeae train: run {r.run_name}: trained {r.epochs_trained} epoch(s) in {r.minutes_trained:.1f} min "
          f"this time (stopped: {r.stopped or 'not yet'}); best epoch {r.best_epoch}: {quality}")
    print(f"raeae train: checkpoint: {r.checkpoint_uri}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from raeae.restoring import RestoreConfig, restore

    summary = restore(config_from_args(RestoreConfig, args), verbose=args.verbose)
    return 0 if summary["rows"] == summary["files"] else 1


def _nightly(args: argparse.Namespace) -> int:
    from raeae.incremental import NightlyConfig, nightly

    nightly(config_from_args(NightlyConfig, args), verbose=args.verbose)
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

    demo(config_from_args(DemoConfig, args), verbose=args.verbose)
    return 0


def _archive(args: argparse.Namespace) -> int:
    from raeae.archive import ArchiveConfig, self_train_and_restore

    self_train_and_restore(config_from_args(ArchiveConfig, args), verbose=args.verbose)
    return 0


def _samples(args: argparse.Namespace) -> int:
    from raeae.demo import SamplesConfig, samples

    samples(config_from_args(SamplesConfig, args))
    return 0


def _info(args: argparse.Namespace) -> int:
    from raeae.info import InfoConfig, info

    info(config_from_args(InfoConfig, args))
    return 0


def _report(args: argparse.Namespace) -> int:
    from raeae.report import ReportConfig, report

    report(config_from_args(ReportConfig, args))
    return 0


def _config_classes() -> dict:
    """Each command's config class, imported on demand: train, evaluate and demo import torch (~1.5 s),
    which restore and nightly leave to their model actors."""
    def train():
        from raeae.train_config import TrainConfig
        return TrainConfig

    def restore():
        from raeae.restoring import RestoreConfig
        return RestoreConfig

    def nightly():
        from raeae.incremental import NightlyConfig
        return NightlyConfig

    def archive():
        from raeae.archive import ArchiveConfig
        return ArchiveConfig

    def export():
        from raeae.export import ExportConfig
        return ExportConfig

    def evaluate():
        from raeae.evaluate import EvaluateConfig
        return EvaluateConfig

    def demo():
        from raeae.demo import DemoConfig
        return DemoConfig

    def samples():
        from raeae.demo import SamplesConfig
        return SamplesConfig

    def info():
        from raeae.info import InfoConfig
        return InfoConfig

    def report():
        from raeae.report import ReportConfig
        return ReportConfig

    return {"report": report, "train": train, "restore": restore, "nightly": nightly, "archive": archive, "export": export,
            "evaluate": evaluate, "demo": demo, "samples": samples, "info": info}


COMMANDS = [  # name, function, one-line help
    ("train", _train, "train a denoising autoencoder on Ray Train"),
    ("restore", _restore, "restore a collection of images into Parquet with Ray Data"),
    ("nightly", _nightly, "restore only what is new in an archive, exactly once"),
    ("archive", _archive, "learn from a noisy archive itself (no clean images), then restore all of it"),
    ("export", _export, "write restored images from Parquet back to image files"),
    ("evaluate", _evaluate, "PSNR/SSIM of a model against classical denoisers"),
    ("demo", _demo, "the main job end to end on embedded sample photographs"),
    ("samples", _samples, "write a noisy archive of the embedded sample photographs"),
    ("info", _info, "describe a model: its network, its training and what it measured"),
    ("report", _report, "write the HTML report of a restore or nightly output again, from the output alone"),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``raeae`` parser. With ``only``, just that command gets its flags (the others are listed
    by name), so a command imports its own modules and no one else's."""
    parser = argparse.ArgumentParser(prog="raeae", description="Distributed batch image restoration with a "
                                     "dense denoising autoencoder (Ray Train + Ray Data).")
    parser.add_argument("--version", action="version", version=f"raeae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    classes = _config_classes()
    for name, fn, help_text in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        cls = classes[name]()
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip().splitlines()[0])
        # nightly reads --archive; its nested restore settings take their input from there
        add_config_flags(p, cls, skip=("input",) if name == "nightly" else ())
        p.add_argument("--verbose", action="store_true",
                       help="show Ray's own log lines and every worker's output [default: off, quiet]")
        if name == "train":
            from raeae.train_config import Preset

            p.add_argument("--preset", choices=[e.value for e in Preset], default=Preset.AUTO.value,
                           help="recipe the unset flags come from: photo (13x13 residual net, cosine lr "
                                "3e-4, flips, 10 min), digits (MNIST net, lr 3e-3, 10 epochs), archive "
                                "(photo, self-supervised, batches of 1024 at lr 6e-4), auto = digits for "
                                "MNIST IDX data, archive with --self-supervised, photo otherwise [default: auto]")
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = [name for name, _, _ in COMMANDS]
    parser = build_parser(only=argv[0] if argv and argv[0] in names else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"raeae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raeae {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`raeae info | head`): not an error worth a traceback. Python would try
        # to flush stdout again at exit and fail a second time, so stdout now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command that SIGPIPE ended


def console(argv: list[str] | None = None) -> int:
    """The one way out of a process: the ``raeae`` console script and the ``jobs/*.py`` entrypoints
    run :func:`main`, then leave Ray at once (see :func:`raeae.cluster.disconnect`). In-process callers
    of :func:`main` (tests sharing one Ray) keep their Ray."""
    try:
        return main(argv)
    finally:
        disconnect()
        # Python's final garbage collection at exit walks every object the imports made (Ray, Ray Data,
        # pyarrow): 0.8 s of one core after the summary is printed, measured on 2 CPUs. Frozen objects
        # are out of its reach; atexit handlers and the flush of stdout and stderr still run.
        gc.freeze()


if __name__ == "__main__":
    sys.exit(console())
