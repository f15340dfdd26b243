"""Training throughput: a plain single-process PyTorch loop vs Ray Train with 1 and 2 workers.

Same model, data, global batch and epochs in all three, measured in one run: the setups interleaved
``--repeats`` times (the plain loop in a fresh process with no Ray running on the machine, Ray Train on
a fresh local Ray), medians reported. "Loop" samples/s count
only the training loops (patch sampling, corruption, forward, backward, step); ``fit overhead`` is the
rest of ``TorchTrainer.fit()`` (Ray start of the controller and workers, each worker reading its share of the data, reporting).

    .venv/bin/python bench/train.py --data ../shared/data/mnist --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace

import torch

from _report import print_table, write_json

from raeae.corrupt import NoiseConfig
from raeae.data import arrays_from_rows, load_source
from raeae.model import build_model
from raeae.training import train
from raeae.train_config import Preset, TrainConfig
from raeae.train_loop import Clock, EpochTrainer, make_sampler


def plain_loop(cfg: TrainConfig) -> dict:
    """The same EpochTrainer steps in this process, no Ray, no DDP, torch's default threads."""
    src = load_source(cfg.data, cfg.model.channels, cfg.val_fraction, cfg.seed)
    images = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays_from_rows(src.train_rows.to_pydict())] \
        if src.train_rows is not None else None
    if images is None:
        raise SystemExit("bench/train.py takes an IDX folder (MNIST) for the plain loop")
    torch.manual_seed(cfg.seed)
    sampler = make_sampler(images, cfg)  # the same sampler as each Ray Train worker
    model = build_model(cfg.model)
    model.init_output_bias(sampler.mean_patch())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = EpochTrainer(cfg, model, opt, sampler, torch.device("cpu"))
    samples, seconds = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        s = trainer.run_epoch(epoch, Clock(math.inf))
        samples += s["steps"] * trainer.batch
        seconds += s["epoch_s"]
    return {"samples_per_s": samples / seconds, "loop_s": seconds, "fit_s": None}


def ray_train(cfg: TrainConfig, workers: int, out: str) -> dict:
    # Each run gets the whole machine, like the plain loop: N workers share its CPUs.
    cpus = os.cpu_count() or 1
    r = train(TrainConfig(**{**cfg.__dict__, "workers": workers, "output": f"{out}/w{workers}",
                             "cpus_per_worker": max(1.0, cpus / workers),
                             "run_name": f"bench-{workers}-{time.time_ns()}"}))
    samples = sum(h["steps"] for h in r.history) * (cfg.batch_size // workers) * workers
    return {"samples_per_s": samples / r.loop_s, "loop_s": r.loop_s, "fit_s": r.fit_s}


def plain_in_own_process(a: argparse.Namespace) -> dict:
    """The plain loop in a fresh process with no Ray in it, as a user would run it."""
    result = f"{a.out}/plain.json"
    os.makedirs(a.out, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--data", a.data, "--epochs", str(a.epochs), "--batch-size",
                    str(a.batch_size), "--out", a.out, "--json", result, "--plain-only"], check=True)
    with open(result) as f:
        return json.load(f)


def median_row(runs: list[dict]) -> dict:
    """The median repeat (by samples/s), with the spread of all repeats."""
    runs = sorted(runs, key=lambda r: r["samples_per_s"])
    return {**runs[len(runs) // 2], "min_samples_per_s": runs[0]["samples_per_s"],
            "max_samples_per_s": runs[-1]["samples_per_s"], "repeats": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="an MNIST IDX folder, e.g. ../shared/data/mnist")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=256, help="global batch")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the three setups; the "
                                                          "table shows the median and the spread (this "
                                                          "machine's speed drifts ~10 %% between runs)")
    p.add_argument("--out", default="runs/bench-train", help="scratch folder for checkpoints")
    p.add_argument("--json", default="runs/bench-train.json", help="where the table is written as JSON")
    p.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)  # child: one plain loop
    a = p.parse_args(argv)
    # The digits recipe (what `raeae train` uses for MNIST), at the bench's epochs and batch.
    cfg = replace(Preset.DIGITS.config(), data=a.data, output="", epochs=a.epochs, batch_size=a.batch_size,
                  patience=0, noise=NoiseConfig(sigma=50), storage_path=f"{a.out}/ray")
    if a.plain_only:
        with open(a.json, "w") as f:
            json.dump(plain_loop(cfg), f)
        return 0
    import ray

    names = ["plain loop (1 process)", "Ray Train, 1 worker", "Ray Train, 2 workers"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(a.repeats):  # interleaved, so a drift in the machine's speed hits every setup alike
        runs[names[0]].append(plain_in_own_process(a))  # with no Ray running on the machine
        ray.init(log_to_driver=False)
        for w in (1, 2):
            runs[names[w]].append(ray_train(cfg, w, a.out))
        ray.shutdown()
    rows = {n: median_row(r) for n, r in runs.items()}
    base = rows[names[0]]["samples_per_s"]
    print(f"\nmodel {cfg.model.features}-{list(cfg.model.hidden)}-{cfg.model.latent}-"
          f"{list(cfg.model.decoder_hidden)}, global batch {a.batch_size}, {a.epochs} epochs, {a.data}, "
          f"median of {a.repeats} interleaved repeats\n")
    table = []
    for name, r in rows.items():
        fit = f"{r['fit_s']:.1f}" if r["fit_s"] else "-"
        over = f"{r['fit_s'] - r['loop_s']:.1f}" if r["fit_s"] else "-"
        table.append([name, f"{r['samples_per_s']:.0f}", f"{r['min_samples_per_s']:.0f}-{r['max_samples_per_s']:.0f}",
                      f"{r['samples_per_s'] / base:.2f}", f"{r['loop_s']:.1f}", fit, over])
    print_table(["setup", "loop samples/s", "range", "ratio to plain", "loop s", "fit() s", "fit overhead s"],
                table, right={1, 2, 3, 4, 5, 6})
    write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
