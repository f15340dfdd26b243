"""The model stage alone on one accelerator: what a GPU restore actor and a GPU training worker would
do, with nothing but PyTorch (the device machine has torch, not Ray or pyarrow).

* restore: the restore actor's batch call (``raeae.stages.ModelStage``: the bundled gray model loaded
  as the actor loads it, then ``raeae.inference.restore_arrays`` with the actor's arguments: tiles of
  many images packed into each forward pass, then blended back) on 64×64 images, in fp32 and in
  bfloat16 (``--precision``; what ``raeae restore --gpu`` runs by default), with the shipped
  ``--tile-batch`` and with ``--tiles`` rows per pass; MP/s of restored pixels;
* forward only: tiles/s of the bare model on big tile batches, and its TFLOP/s;
* train: samples/s of ``raeae.train_loop.EpochTrainer.run_epoch`` (what a Ray Train worker runs) with the
  photograph recipe as shipped (``TrainConfig()``: σ=25, flips, MSE, Adam, cosine learning rate,
  ``--precision auto``), as ``raeae train`` reports it per epoch;
* the bound: the TFLOP/s of plain matrix multiplies of the model's largest layer shape on this device,
  measured here, so "share of bound" is the model's FLOPs per tile × tiles/s against it.

    python bench/gpu_check.py [--device cuda] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from raeae import checkpoint as ckpt
from raeae.inference import PACK_TILES, restore_arrays
from raeae.model import build_model
from raeae.settings import TILE_BATCH, Precision
from raeae.train_config import TrainConfig
from raeae.train_loop import Clock, EpochTrainer, make_sampler


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


def train_samples_per_s(cfg: TrainConfig, device: torch.device, seconds: float) -> float:
    """Samples/s of the training worker's epochs (``EpochTrainer.run_epoch``, after one warm-up epoch),
    set up as ``raeae.train_loop.train_loop_per_worker`` sets up one worker, on random 128×128 images."""
    gen = torch.Generator().manual_seed(cfg.seed)
    images = [torch.randint(0, 256, (cfg.model.channels, 128, 128), dtype=torch.uint8, generator=gen)
              for _ in range(16)]
    sampler = make_sampler(images, cfg)
    model = build_model(cfg.model)
    model.init_output_bias(sampler.mean_patch())
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = EpochTrainer(cfg, model, optimizer, sampler, device)
    clock = Clock(math.inf)
    trainer.run_epoch(1, clock)
    samples, spent, epoch = 0, 0.0, 1
    while spent < seconds:
        epoch += 1
        stats = trainer.run_epoch(epoch, clock)
        samples += stats["steps"] * trainer.batch
        spent += stats["epoch_s"]
    return samples / spent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    p.add_argument("--images", type=int, default=512, help="64×64 images per restore call")
    p.add_argument("--tiles", type=int, default=65536, help="tiles per forward pass (forward-only rows, the "
                                                             "rows of the matrix-multiply bound, and a "
                                                             "restore with passes this large)")
    p.add_argument("--train-batch", type=int, default=0,
                   help="patches per training step (0 = the recipe's, TrainConfig().batch_size; smaller "
                        "only for smoke runs)")
    p.add_argument("--json", default="", help="also write the results here")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; bf16 is measured separately
    torch.manual_seed(0)
    # the restore actor's model, loaded as raeae.stages.ModelStage loads it
    state = ckpt.parse(ckpt.read_models(ckpt.BUILTIN + "gray")[0])
    model = ckpt.model_from_state(state).to(device)
    stride = ckpt.recommended_stride(state)
    cfg = model.config
    per_tile = flops_per_tile(model)
    widest = max((m for m in model.modules() if isinstance(m, torch.nn.Linear)),
                 key=lambda m: m.in_features * m.out_features)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; builtin:gray {cfg.net_features}->{list(cfg.hidden)}->{cfg.latent}->"
          f"{list(cfg.decoder_hidden)}->{cfg.net_features}, {per_tile / 1e6:.2f} MFLOP per tile, stride {stride}")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(a.images)]
    results = {"device": name, "flops_per_tile": per_tile}
    rows = []
    for precision in (Precision.FP32, Precision.BF16):
        bf16 = precision is Precision.BF16
        bound = matmul_bound(device, bf16, a.tiles, widest.in_features, widest.out_features, a.seconds)
        with torch.inference_mode():
            x = torch.rand(a.tiles, cfg.features, device=device)
            # a noise_input model is told each tile's σ (here 25, in [0, 1] units), as restore tells it
            level = torch.full((a.tiles,), 25 / 255, device=device) if cfg.noise_input else None
            with precision.autocast(device):
                calls, s = timed(lambda: model(x, level=level), device, a.seconds)
        tiles_s = calls * a.tiles / s
        mp_s = {}
        # the actor's call as shipped (--tile-batch, the default packing), then passes of --tiles rows
        for tile_batch, pack_tiles in ((TILE_BATCH, PACK_TILES), (a.tiles, a.tiles)):
            calls, s = timed(lambda: restore_arrays(model, images, stride, tile_batch, device,
                                                    precision=precision, pack_tiles=pack_tiles),
                             device, a.seconds)
            mp_s[tile_batch] = calls * a.images * 64 * 64 / s / 1e6
        achieved = tiles_s * per_tile / 1e12
        results[precision.value] = {"restore_mp_s": mp_s[TILE_BATCH], "restore_mp_s_big_passes": mp_s[a.tiles],
                                    "forward_tiles_s": tiles_s, "forward_tflops": achieved,
                                    "matmul_bound_tflops": bound}
        rows.append(f"| {precision.value} | {mp_s[TILE_BATCH]:.1f} | {mp_s[a.tiles]:.1f} | {tiles_s / 1e6:.2f} | "
                    f"{achieved:.1f} | {bound:.1f} | {achieved / bound:.0%} |")

    train_cfg = TrainConfig()  # the photograph recipe, as `raeae train` runs it
    if a.train_batch:
        train_cfg = replace(train_cfg, batch_size=a.train_batch)
    results["train_samples_s"] = train_samples_per_s(train_cfg, device, a.seconds)
    results["train_bf16"] = train_cfg.precision.bf16_on(device)
    print(f"\n| precision | restore MP/s (64×64 images, --tile-batch {TILE_BATCH}) | restore MP/s ({a.tiles}-row "
          "passes) | forward Mtiles/s | forward TFLOP/s | matmul bound TFLOP/s | share of bound |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\ntrain epochs (the photo recipe, batch {train_cfg.batch_size}, "
          f"{'bf16' if results['train_bf16'] else 'fp32'} by --precision {train_cfg.precision.value}): "
          f"{results['train_samples_s']:,.0f} samples/s "
          f"({results['train_samples_s'] * per_tile * 3 / 1e12:.2f} TFLOP/s at ~3× the forward FLOPs)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
