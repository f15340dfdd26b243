"""raeae: distributed batch image restoration with a dense denoising autoencoder.

Library first: the CLI (``raeae``) and the Ray jobs under ``jobs/`` are thin layers over these.
"""

__all__ = ["load_model", "restore_image", "read_restored"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so `import raeae.model` needs only torch (the GPU check runs where
    # pyarrow and Ray are not installed) and the CLI starts without loading what it does not use.
    if name == "load_model":
        from raeae.checkpoint import load_model

        return load_model
    if name == "restore_image":
        from raeae.inference import restore_image

        return restore_image
    raise AttributeError(f"module 'raeae' has no attribute {name!r}")


def read_restored(output: str, **kwargs):
    """The latest committed row per source path of a ``raeae restore`` or ``raeae nightly`` output,
    as a pyarrow Table (see :func:`raeae.nightly.read_restored`)."""
    from raeae.nightly import read_restored as _read

    return _read(output, **kwargs)
