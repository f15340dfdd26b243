"""Learning from the damaged archive itself: blind-spot masking, and the one job that trains on an
archive's noisy images and then restores all of them."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import raeae
from raeae.corrupt import NoiseConfig, blind_spot, masked_mse
from raeae.data import SAMPLE_HELD_OUT, SAMPLE_TRAIN
from raeae.evaluate import make_noisy
from raeae.metrics import psnr
from tests.conftest import photo


def test_blind_spot_hides_the_asked_share_with_other_pixels_values():
    x = torch.rand(400, 3, 13, 13)
    masked, mask = blind_spot(x, 1 / 16, torch.Generator().manual_seed(0))
    assert mask.shape == (400, 1, 13, 13) and abs(mask.float().mean().item() - 1 / 16) < 0.01
    hidden = mask.expand(-1, 3, -1, -1)
    assert torch.equal(masked[~hidden], x[~hidden])  # visible pixels untouched
    assert (masked[hidden] != x[hidden]).float().mean() > 0.99  # hidden ones carry another pixel's value
    # every hidden value is some pixel of the same patch and channel
    assert all(bool((x[i, c] == masked[i, c, r, q]).any()) for i, c, r, q in zip(*torch.nonzero(hidden)[:50].T))


def test_masked_mse_counts_hidden_pixels_only():
    target = torch.zeros(2, 2 * 4 * 4)
    out = torch.ones(2, 2 * 4 * 4)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 1] = True
    assert masked_mse(out, target, mask).item() == 1.0
    out2 = out.clone()
    out2.view(2, 2, 4, 4)[0, :, 1, 1] = 0.0  # exact on the hidden pixel, wrong everywhere else
    assert masked_mse(out2, target, mask).item() == 0.0


def _archive(folder, n: int, size: int, noise: NoiseConfig):
    """``n`` noisy crops of the sample photographs, and their clean originals by name."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = SAMPLE_TRAIN + SAMPLE_HELD_OUT
    clean = {}
    for i in range(n):
        img = photo(names[i % len(names)])
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        c = img[y:y + size, x:x + size]
        c = c if c.ndim == 2 else np.asarray(Image.fromarray(c[..., :3]).convert("L"))
        clean[f"a{i:03d}"] = c
        Image.fromarray(make_noisy(c, noise, i)).save(folder / f"a{i:03d}.png")
    return clean


@pytest.mark.slow
def test_archive_job_learns_from_the_noisy_archive_and_restores_all_of_it(ray_session, tmp_path):
    from raeae.archive import ArchiveConfig, self_train_and_restore

    clean = _archive(tmp_path / "archive", n=120, size=48, noise=NoiseConfig(sigma=25))
    manifest = self_train_and_restore(ArchiveConfig(archive=str(tmp_path / "archive"), output=str(tmp_path / "out"),
                                                    max_minutes=0.4, run_id="first"))
    assert manifest["inputs_restored"] == manifest["rows"] == 120 and manifest["errors"] == 0
    assert manifest["model"].endswith("_models/first")
    state = torch.load(tmp_path / "out" / "_models" / "first" / "model.pt", weights_only=True)
    assert state["train_config"]["self_supervised"] and state["train_config"]["data"] == str(tmp_path / "archive")
    rows = raeae.read_restored(str(tmp_path / "out")).to_pylist()
    gains = []
    for r in rows:
        name = r["path"].rsplit("/", 1)[1][:-4]
        noisy = np.asarray(Image.open(r["path"]))
        gains.append(psnr(clean[name], np.asarray(Image.open(io.BytesIO(r["image"]))))
                     - psnr(clean[name], noisy))
    print(f"archive job, 0.4 min of self-supervised training: mean gain {np.mean(gains):+.2f} dB over the noisy input")
    assert np.mean(gains) > 1.0

