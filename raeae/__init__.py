"""raeae: distributed batch image restoration with a dense denoising autoencoder.

Library first: the CLI (``raeae``) and the Ray jobs under ``jobs/`` are thin layers over these.

* :func:`train` a model on Ray Train; :func:`restore` a folder or prefix of images into Parquet with
  Ray Data; :func:`nightly` restore only what is new in an archive, exactly once;
* :func:`load_model` (a checkpoint or ``builtin:NAME``), :func:`restore_image` (one numpy image),
  :func:`read_restored` (the rows of an output);
* their configs: :class:`TrainConfig`, :class:`RestoreConfig`, :class:`NightlyConfig` (and the nested
  :class:`ModelConfig`, :class:`NoiseConfig`).

Each of ``train``, ``restore`` and ``nightly`` takes its config, or its settings by name as the
command's flags name them (``raeae.train(data="photos/", output="model/", max_minutes=10)`` is
``raeae train --data photos/ --output model/ --max-minutes 10``), resolved the same way.
"""

__all__ = ["train", "restore", "nightly", "load_model", "restore_image", "read_restored",
           "TrainConfig", "RestoreConfig", "NightlyConfig", "ModelConfig", "NoiseConfig"]
__version__ = "0.1.0"

# name -> (module, attribute), imported on first use: `import raeae.model` needs only torch (the GPU check
# runs where pyarrow and Ray are not installed), and the CLI starts without loading what it does not use
_LAZY = {"load_model": ("raeae.checkpoint", "load_model"), "restore_image": ("raeae.inference", "restore_image"),
         "TrainConfig": ("raeae.train_config", "TrainConfig"), "RestoreConfig": ("raeae.restoring", "RestoreConfig"),
         "NightlyConfig": ("raeae.incremental", "NightlyConfig"), "ModelConfig": ("raeae.model", "ModelConfig"),
         "NoiseConfig": ("raeae.corrupt", "NoiseConfig")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'raeae' has no attribute {name!r}")


def train(config=None, *, preset: str = "auto", verbose: bool = False, **settings):
    """Train a model on Ray Train and write its best checkpoint to ``output``; returns a
    :class:`raeae.training.TrainResult`. ``config`` is a :class:`TrainConfig`, or ``settings`` by name
    are resolved with ``preset`` exactly as ``raeae train`` resolves its flags
    (:func:`raeae.train_config.resolve`)."""
    from raeae.train_config import resolve
    from raeae.training import train as _train

    cfg = config if config is not None else resolve(preset, **settings)[1]
    return _train(cfg, verbose=verbose)


def restore(config=None, *, verbose: bool = False, **settings) -> dict:
    """Restore every image under ``input`` into Parquet under ``output`` (and its ``_summary.json`` and
    ``_report.html``); returns the summary. ``config`` is a :class:`RestoreConfig`, or its settings by name."""
    from raeae.cliutil import config_from_settings
    from raeae.restoring import RestoreConfig, restore as _restore

    return _restore(config if config is not None else config_from_settings(RestoreConfig, settings), verbose=verbose)


def nightly(config=None, *, verbose: bool = False, **settings) -> dict:
    """Restore what is new or changed in ``archive`` since the last committed run into ``output``, exactly
    once; returns the run's manifest. ``config`` is a :class:`NightlyConfig`, or its settings by name."""
    from raeae.cliutil import config_from_settings
    from raeae.incremental import NightlyConfig, nightly as _nightly

    return _nightly(config if config is not None else config_from_settings(NightlyConfig, settings), verbose=verbose)


def read_restored(output: str, **kwargs):
    """The latest committed row per source path of a ``raeae restore`` or ``raeae nightly`` output,
    as a pyarrow Table (see :func:`raeae.contract.read_restored`)."""
    from raeae.contract import read_restored as _read

    return _read(output, **kwargs)
