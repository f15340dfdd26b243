"""Where bytes live: local paths and object storage behind one pyarrow filesystem interface.

pyarrow's filesystems are what Ray Data reads and writes with, so one object serves listing, reading
bytes in our own tasks, and ``write_parquet``. S3 credentials and endpoint come from the standard AWS
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``)
unless :class:`StorageConfig` overrides them. Any fsspec filesystem can also be used through
:func:`from_fsspec`.

pyarrow is imported by the functions that reach a filesystem, not by this module: the training step
and the model code import without it (``bench/gpu_check.py`` runs them on a machine with torch alone).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pyarrow.fs as pafs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".heic", ".heif", ".avif", ".bmp", ".tif", ".tiff",
                    ".webp", ".gif", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm")


class StorageError(RuntimeError):
    """A location cannot be reached or does not exist; the message is meant for the user as is."""


@dataclass(frozen=True)
class StorageConfig:
    """Overrides for object-storage access; empty fields fall back to the standard AWS environment."""

    endpoint_url: str = field(default="", metadata={
        "help": "S3 endpoint, e.g. http://127.0.0.1:8333 for MinIO/SeaweedFS (default: $AWS_ENDPOINT_URL "
                "or AWS itself)"})
    region: str = field(default="", metadata={"help": "S3 region (default: $AWS_REGION or us-east-1)"})
    access_key: str = field(default="", metadata={
        "help": "S3 access key id (default: $AWS_ACCESS_KEY_ID); prefer the environment, flags show in `ps`"})
    secret_key: str = field(default="", metadata={"help": "S3 secret key (default: $AWS_SECRET_ACCESS_KEY)"})

    def __repr__(self) -> str:  # never print secrets, not even in a traceback or a log line
        return (f"StorageConfig(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
                f"access_key={'***' if self.access_key else ''!r}, secret_key={'***' if self.secret_key else ''!r})")

    def with_environment(self) -> "StorageConfig":
        """Fill empty fields from this process's AWS environment, so remote Ray workers (whose
        environment is the cluster's, not the caller's) use the caller's endpoint and credentials."""
        env = os.environ.get
        return StorageConfig(
            endpoint_url=self.endpoint_url or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL", ""),
            region=self.region or env("AWS_REGION") or env("AWS_DEFAULT_REGION", ""),
            access_key=self.access_key or env("AWS_ACCESS_KEY_ID", ""),
            secret_key=self.secret_key or env("AWS_SECRET_ACCESS_KEY", ""))

    def to_dict(self) -> dict:
        """Safe to store or log: no credentials."""
        return {"endpoint_url": self.endpoint_url, "region": self.region}


def _s3(config: StorageConfig) -> pafs.S3FileSystem:
    import pyarrow.fs as pafs

    endpoint = config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")
    kwargs: dict = {"region": config.region or os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # S3-compatible servers want path-style addressing (bucket in the path, not the host name).
        kwargs["force_virtual_addressing"] = False
    access = config.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = config.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        kwargs["access_key"] = access
        kwargs["secret_key"] = secret
        token = os.environ.get("AWS_SESSION_TOKEN")
        if token:
            kwargs["session_token"] = token
    # Fail fast on a dead endpoint instead of retrying for minutes.
    kwargs["connect_timeout"] = 5
    kwargs["request_timeout"] = 30
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, config: StorageConfig = StorageConfig()) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a URI: local path, ``file://``, ``s3://``, ``gs://``, ``hdfs://``…"""
    import pyarrow.fs as pafs

    if not uri:
        raise StorageError("empty path")
    scheme = urlparse(uri).scheme
    if scheme == "s3":
        return _s3(config), uri[len("s3://"):].rstrip("/")
    if scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        path = uri[len("file://"):] if scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception:  # noqa: BLE001 - fall back to fsspec for schemes pyarrow lacks
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return from_fsspec(fs), path


def from_fsspec(fs) -> pafs.FileSystem:
    """Wrap any fsspec filesystem so Ray Data and our readers can use it."""
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def display_uri(uri_prefix: str, path: str) -> str:
    """The user-facing URI of ``path`` on the same filesystem as ``uri_prefix``."""
    scheme = urlparse(uri_prefix).scheme
    if scheme and len(scheme) > 1 and scheme != "file":
        return f"{scheme}://{path}"
    return path


def explain(exc: BaseException, uri: str) -> str:
    """One line that says what went wrong with a location, without a traceback."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = msg.lower()
    if "access denied" in low or "access_denied" in low or "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low or "403" in low:
        return f"{uri}: access denied - check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY ({msg})"
    if "curl" in low or "connect" in low or "resolve" in low or "timed out" in low:
        return f"{uri}: cannot reach the storage endpoint - check AWS_ENDPOINT_URL / --endpoint-url ({msg})"
    return f"{uri}: {msg}"


def list_images(uri: str, config: StorageConfig = StorageConfig(),
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[dict]:
    """All image files under ``uri`` (recursive), sorted by path, with size and modification time.

    A single file URI lists just that file. Raises :class:`StorageError` with one clear line when the
    location does not exist or cannot be reached.
    """
    return list_files(uri, config, extensions)[0]


def list_files(uri: str, config: StorageConfig = StorageConfig(),
               extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[list[dict], list[str]]:
    """(:func:`list_images`, the URIs of the other files there, sorted): what a command skips, so it can
    say so rather than leave a file without a row and without a word."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri, config)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{uri}: no such file or folder")
        if info.type == pafs.FileType.File:
            infos = [info]
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(explain(exc, uri)) from None
    out, skipped = [], []
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        # hidden files are skipped too: macOS's "._photo.jpg" resource forks, partial uploads
        if not i.path.lower().endswith(extensions) or posixpath.basename(i.path).startswith("."):
            skipped.append(display_uri(uri, i.path))
            continue
        mtime = i.mtime.timestamp() if i.mtime is not None else None
        out.append({"path": display_uri(uri, i.path), "size": int(i.size or 0), "mtime": mtime})
    out.sort(key=lambda r: r["path"])
    return out, sorted(skipped)


def first_names(paths: list[str], shown: int = 3) -> str:
    """The file names of the first ``shown`` paths, for a one-line note ("a.png, b.png, ...")."""
    return ", ".join(posixpath.basename(p) for p in paths[:shown]) + (", ..." if len(paths) > shown else "")


def skipped_note(skipped: list[str]) -> str:
    """One line about the files a listing skipped ("" when none), naming the first few."""
    if not skipped:
        return ""
    return (f"{len(skipped)} other file(s) skipped, not images by name or hidden ({first_names(skipped)}); "
            f"images end in {' '.join(IMAGE_EXTENSIONS)}")


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Readers see the whole file or nothing: write beside it, then rename (an object PUT on S3)."""
    import uuid

    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    write_bytes(fs, tmp, data)
    fs.move(tmp, path)


def strip_scheme(uri: str) -> str:
    """The path a filesystem from :func:`resolve` takes: ``s3://bucket/key`` -> ``bucket/key``; a local
    path stays as it is (also ``C:/x``: a one-letter scheme is a Windows drive)."""
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1:
        return uri.split("://", 1)[1]
    return uri
