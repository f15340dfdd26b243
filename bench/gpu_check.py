"""The model stage alone on one accelerator: what a GPU restore actor and a GPU training worker would
do, with nothing but PyTorch (the device machine has torch, not Ray or pyarrow).

* restore: ``raeae.inference.restore_arrays`` (the restore actor's batch call: tiles of many images
  packed into each forward pass, then blended back) on 64×64 images already on the device, in fp32
  and under bfloat16 autocast (what ``raeae restore --gpu`` runs); MP/s of restored pixels;
* forward only: tiles/s of the bare model on big tile batches, and its TFLOP/s;
* train: samples/s of the training step (flips, blind Gaussian noise, MSE, Adam) as in
  ``raeae.train.EpochTrainer``, fp32;
* the bound: the TFLOP/s of plain matrix multiplies of the model's largest layer shape on this device,
  measured here, so "share of bound" is the model's FLOPs per tile × tiles/s against it.

    python bench/gpu_check.py [--device cuda] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from raeae.corrupt import NoiseConfig, corrupt
from raeae.inference import restore_arrays
from raeae.model import build_model, photo_config
from raeae.patches import dihedral


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float) -> tuple[int, float]:
    """Calls of ``fn`` in about ``seconds`` (after one warm-up call), and the time they took."""
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync(device)
    return n, time.perf_counter() - t0


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def flops_per_tile(model) -> int:
    """Multiply-adds ×2 of one forward pass of one tile (the Linear layers; activations are noise)."""
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def matmul_bound(device: torch.device, bf16: bool, rows: int, k: int, n: int, seconds: float) -> float:
    """TFLOP/s of (rows × k) @ (k × n) on this device: what the model's layers could reach at best on a
    batch of ``rows`` tiles."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(rows, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    calls, s = timed(lambda: a @ b, device, seconds)
    return 2 * rows * k * n * calls / s / 1e12


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    p.add_argument("--images", type=int, default=512, help="64×64 images per restore call")
    p.add_argument("--tiles", type=int, default=65536, help="tiles per forward pass (forward-only rows, and "
                                                             "the rows of the matrix-multiply bound)")
    p.add_argument("--train-batch", type=int, default=256, help="patches per training step (TrainConfig default)")
    p.add_argument("--json", default="", help="also write the results here")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; bf16 is measured separately
    torch.manual_seed(0)
    cfg = photo_config()
    model = build_model(cfg).to(device).eval()
    per_tile = flops_per_tile(model)
    widest = max((m for m in model.modules() if isinstance(m, torch.nn.Linear)),
                 key=lambda m: m.in_features * m.out_features)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; model {cfg.net_features}->{list(cfg.hidden)}->{cfg.latent}->"
          f"{list(cfg.decoder_hidden)}->{cfg.net_features}, {per_tile / 1e6:.2f} MFLOP per tile")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(a.images)]
    results = {"device": name, "flops_per_tile": per_tile}
    rows = []
    for bf16 in (False, True):
        label = "bf16 autocast" if bf16 else "fp32"
        bound = matmul_bound(device, bf16, a.tiles, widest.in_features, widest.out_features, a.seconds)
        with torch.inference_mode():
            x = torch.rand(a.tiles, cfg.features, device=device)
            with autocast(device, bf16):
                calls, s = timed(lambda: model(x), device, a.seconds)
            tiles_s = calls * a.tiles / s
            with autocast(device, bf16):
                calls, s = timed(lambda: restore_arrays(model, images, device=device, batch_size=a.tiles,
                                                        pack_tiles=a.tiles), device, a.seconds)
        mp_s = calls * a.images * 64 * 64 / s / 1e6
        achieved = tiles_s * per_tile / 1e12
        results[label] = {"restore_mp_s": mp_s, "forward_tiles_s": tiles_s, "forward_tflops": achieved,
                          "matmul_bound_tflops": bound}
        rows.append(f"| {label} | {mp_s:.1f} | {tiles_s / 1e6:.2f} | {achieved:.1f} | {bound:.1f} | "
                    f"{achieved / bound:.0%} |")

    # The training step of raeae.train.EpochTrainer: flips, blind noise, forward, MSE, backward, Adam.
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    gen = torch.Generator(device).manual_seed(0)
    noise = NoiseConfig(sigma=0, sigma_max=55)
    patches = torch.randint(0, 256, (a.train_batch, 1, cfg.patch_size, cfg.patch_size), dtype=torch.uint8,
                            device=device)

    def step():
        clean = dihedral(patches.float().div(255.0), gen)
        noisy = corrupt(clean, noise, gen)
        loss = F.mse_loss(model(noisy.flatten(1)), clean.flatten(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    calls, s = timed(step, device, a.seconds)
    results["train_samples_s"] = calls * a.train_batch / s
    print("\n| precision | restore MP/s (64×64 images) | forward Mtiles/s | forward TFLOP/s | "
          "matmul bound TFLOP/s | share of bound |\n|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\ntrain step (fp32, batch {a.train_batch}): {results['train_samples_s']:,.0f} samples/s "
          f"({results['train_samples_s'] * per_tile * 3 / 1e12:.2f} TFLOP/s at ~3× the forward FLOPs)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
