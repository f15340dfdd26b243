"""raeae: distributed batch image restoration with a dense denoising autoencoder.

Library first: the CLI (``raeae``) and the Ray jobs under ``jobs/`` are thin layers over these.
"""

from raeae.checkpoint import load_model
from raeae.inference import restore_image

__all__ = ["load_model", "restore_image", "read_restored"]
__version__ = "0.1.0"


def read_restored(output: str, **kwargs):
    """The latest committed row per source path of a ``raeae restore`` or ``raeae nightly`` output,
    as a pyarrow Table (see :func:`raeae.nightly.read_restored`)."""
    from raeae.nightly import read_restored as _read

    return _read(output, **kwargs)
