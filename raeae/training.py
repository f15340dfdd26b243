"""Training on Ray Train: data-parallel DDP over ``TorchTrainer`` workers (CPU locally, GPU on a cluster).

This module is the driver: it checks the request, finds the data, starts the ``TorchTrainer`` whose
workers run :func:`raeae.train_loop.train_loop_per_worker`, prints epoch lines and writes the
best checkpoint. The config is :mod:`raeae.train_config`; the loop :mod:`raeae.train_loop`.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from raeae import checkpoint as ckpt
from raeae.cluster import alive_nodes, capacity, connect, require
from raeae.data import load_source, read_image
from raeae.jpeg import JPEG_INPUTS
from raeae.model import Activation, ModelConfig, describe_network
from raeae.runs import choose_run, write_record
from raeae.storage import list_images, resolve, write_bytes
from raeae.train_config import TrainConfig, budget_text
from raeae.train_loop import Progress, train_loop_per_worker


@dataclass(frozen=True)
class TrainResult:
    checkpoint_uri: str  # the best model, in cfg.output
    metrics: dict  # the last epoch's metrics
    best_val_psnr: float
    best_val_psnr_noisy: float
    best_epoch: int
    fit_s: float  # wall time of TorchTrainer.fit() (0 when nothing was left to train)
    loop_s: float  # time inside the training loops (the rest of fit_s is Ray's overhead)
    history: list
    resumed_at: list  # epochs after which this run was resumed from a checkpoint
    run_name: str = ""
    stopped: str = ""  # why training ended: time budget, patience, epochs
    epochs_trained: int = 0  # by this invocation
    minutes_trained: float = 0.0  # wall minutes of training (with validation) by this invocation


def auto_cpus_per_worker(workers: int, node_cpus: list[float]) -> float:
    """CPUs per worker when not given: the largest node's CPUs shared by the workers placed on it, so
    one worker gets the whole machine (torch then runs its GEMMs on every core)."""
    largest = max(node_cpus, default=1.0)
    per_node = math.ceil(workers / max(1, sum(1 for c in node_cpus if c >= 1)))
    return float(max(1, int(largest // max(1, per_node))))


def require_workers(cfg: TrainConfig, nodes: list[dict]) -> None:
    """Fail fast when the workers cannot fit on this machine's private Ray (see
    :func:`raeae.cluster.require`), naming the flag to change."""
    bundle = {"CPU": cfg.cpus_per_worker, "GPU": 1.0 if cfg.gpu else 0.0}
    require("raeae train", f"--workers {cfg.workers}", cfg.workers, bundle, nodes,
            f"at most {capacity(bundle, nodes)} such workers fit: use fewer --workers or a smaller "
            f"--cpus-per-worker, or join a larger cluster (RAY_ADDRESS)")


def init_weights(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """With ``--init``: the starting checkpoint's model config (it replaces the model flags) and
    weights. Fails before Ray starts if the checkpoint cannot be used."""
    if not cfg.init:
        return cfg, None
    state, _ = ckpt.load_state(cfg.init, cfg.storage)
    model_cfg = ModelConfig.from_dict(state["model_config"])
    if model_cfg.channels == 1 and cfg.model.planes:
        # A gray network is exactly the shared plane network of an opponent-colour model, so
        # `--channels 3 --init builtin:gray` starts colour training from the gray model.
        model_cfg = replace(model_cfg, channels=3, color=cfg.model.color)
    weights = {k: v.float() for k, v in state["model"].items()}  # bundled models are stored in fp16
    if cfg.model.noise_input and not model_cfg.noise_input:
        # `--noise-input --init M`: the level's input weights start at zero, so training starts from
        # exactly what M restores and learns what the level adds.
        if model_cfg.jpeg_input:
            raise ValueError("--noise-input --init: the checkpoint takes JPEG inputs but no noise level")
        model_cfg = replace(model_cfg, noise_input=True)
        _add_zero_inputs(weights, 1)
    if cfg.model.jpeg_input and not model_cfg.jpeg_input:
        # `--jpeg-input --init M`: the JPEG inputs come last, their weights start at zero (as the level's)
        model_cfg = replace(model_cfg, jpeg_input=True)
        _add_zero_inputs(weights, JPEG_INPUTS)
    deeper = _deepened(model_cfg, cfg.model)
    if deeper != model_cfg:
        # `--hidden 1024,1024 --init C` (C: 1024): the added layers start as the identity, so training
        # starts from what C restores
        weights = deepen(weights, model_cfg, deeper)
        model_cfg = deeper
    if cfg.model.margin > model_cfg.margin:
        # `--margin M --init C`: the pixels C did not see start at zero weight (as the level's)
        weights["encoder.0.weight"] = widen_margin(weights["encoder.0.weight"], model_cfg, cfg.model.margin)
        model_cfg = replace(model_cfg, margin=cfg.model.margin)
    return replace(cfg, model=model_cfg, stride=min(cfg.stride, model_cfg.patch_size)), weights


def _add_zero_inputs(weights: dict, count: int) -> None:
    """``count`` more inputs last in the first layer, their weights zero: the network's output is unchanged."""
    first = weights["encoder.0.weight"]
    weights["encoder.0.weight"] = torch.cat([first, first.new_zeros(first.shape[0], count)], dim=1)


def widen_margin(first: torch.Tensor, model_cfg: ModelConfig, margin: int) -> torch.Tensor:
    """The first layer's weight ``(hidden, pixels + extra)`` of a model with ``model_cfg``'s margin as the
    weight of one with ``margin``: each pixel keeps its weight, the new ring of pixels gets zeros, the
    inputs after the pixels (noise level, JPEG) stay last. The wider network restores exactly as before."""
    side, grow = model_cfg.side, margin - model_cfg.margin
    pixels = model_cfg.net_in_features
    planes = pixels // (side * side)
    image = first[:, :pixels].reshape(first.shape[0], planes, side, side)
    wider = torch.nn.functional.pad(image, (grow, grow, grow, grow)).reshape(first.shape[0], -1)
    return torch.cat([wider, first[:, pixels:]], dim=1)


def clean_pairs(source, cfg: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """With --self-supervised --val-clean: (noisy, clean) uint8 H×W×C pairs of the held-out files,
    matched by file name, for a validation PSNR."""
    if not (cfg.self_supervised and cfg.val_clean):
        return None
    if not source.val_files:
        raise ValueError("--val-clean needs a folder of noisy images as --data")
    stem = lambda p: posixpath.splitext(posixpath.basename(p))[0]  # noqa: E731
    clean_files = {stem(f["path"]): f["path"] for f in list_images(cfg.val_clean, cfg.storage)}
    fs, _ = resolve(cfg.data, cfg.storage)
    clean_fs, _ = resolve(cfg.val_clean, cfg.storage)
    pairs = []
    for path in source.val_files:
        if stem(path) not in clean_files:
            continue
        noisy = read_image(fs, path, cfg.model.channels)
        ref = read_image(clean_fs, clean_files[stem(path)], cfg.model.channels)
        if ref.shape == noisy.shape:
            pairs.append((noisy, ref))
    if not pairs:
        raise ValueError(f"--val-clean {cfg.val_clean}: no clean image matches a held-out file of {cfg.data} by name")
    return pairs


def epoch_line(m: dict, cfg: TrainConfig) -> str:
    """One line per epoch for the terminal."""
    where = f"epoch {m['epoch']}" + (f"/{cfg.epochs}" if cfg.epochs else "")
    if math.isfinite(cfg.budget_s):
        where += f" ({max(0.0, cfg.budget_s - m.get('elapsed_s', 0.0)) / 60:.1f} min left)"
    val = (f", validation PSNR {m['val_psnr']:.2f} dB (noisy {m['val_psnr_noisy']:.2f})"
           if "val_psnr" in m else "")
    if "val_ss_loss" in m:
        scheme = f"recorrupt, noise σ {m['noise_sigma']:.1f}" if "noise_sigma" in m else "blind-spot"
        val = f", self-supervised ({scheme}) validation loss {m['val_ss_loss']:.5f}" + val
    return (f"raeae train: {where}: loss {m['train_loss']:.5f}{val}, {m['samples_per_s']:,.0f} samples/s"
            + (f"; stopping: {m['stopped']}" if m.get("stopped") else ""))


class EpochPrinter:
    """Prints rank 0's epoch metrics on the driver as they arrive (a Ray queue; the workers' own
    output stays off the terminal unless --verbose): the first epoch, then at most one line every
    :data:`EVERY_S` seconds, and the last (epochs of a second or two would otherwise fill the screen:
    `make run`'s 90 s fine-tune made 75 lines)."""

    EVERY_S = 10.0

    def __init__(self, cfg: TrainConfig):
        from ray.util.queue import Queue

        self.cfg = cfg
        self._last = -math.inf
        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _drain(self, timeout: float) -> None:
        from ray.util.queue import Empty

        try:
            m = self.queue.get(timeout=timeout)
        except (Empty, Exception):  # noqa: BLE001 - a lost progress line must not end the run
            return
        now = time.monotonic()
        if m.get("stopped") or now - self._last >= self.EVERY_S:
            self._last = now
            print(epoch_line(m, self.cfg), flush=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self._drain(0.5)

    def __enter__(self) -> "EpochPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        while not self.queue.empty():
            self._drain(0.1)
        self.queue.shutdown()


# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), so it
# notices that training has ended up to two polls late. Measured on a 1-epoch run on 2 CPUs: fit() returned
# 5.1 s after the last report at 2 s, 1.6 s at 0.5 s (26.4 s against 30.3 s end to end). The driver's value
# reaches the controller and the workers on any cluster (Ray Train propagates it); a user's own wins.
HEALTH_CHECK_ENV, HEALTH_CHECK_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


@contextlib.contextmanager
def env_default(name: str, value: str):
    """``name=value`` in this process's environment while the block runs, unless the user set ``name``;
    afterwards the environment is as it was (train() is a library call, not only a command)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def train(cfg: TrainConfig, verbose: bool = False) -> TrainResult:
    """Train on Ray Train and write the best checkpoint to ``cfg.output``. Joins the running Ray, or
    starts a local one (:func:`raeae.cluster.connect`)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not cfg.data:
        raise ValueError("--data is required: an MNIST IDX folder or a folder of clean images")
    if not cfg.output:
        raise ValueError("--output is required: where the best checkpoint goes")
    cfg, weights = init_weights(cfg)
    source = load_source(cfg.data, cfg.model.channels, cfg.val_fraction, cfg.seed, cfg.storage, cfg.max_images)
    if source.train_count < cfg.workers:  # each rank trains on its own share of the images
        raise ValueError(f"{source.train_count} training image(s) for {cfg.workers} workers: each worker "
                         f"needs at least one; use fewer --workers")
    pairs = clean_pairs(source, cfg)
    storage_path = cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    run = choose_run(cfg.run_name, cfg.resume, storage_path, cfg.storage, cfg.to_dict(), TrainConfig().to_dict())
    if run.finished:
        print(f"raeae train: run {run.name} already finished ({run.finished}, epoch {run.epoch}); nothing "
              f"to train; its best model goes to {cfg.output}")
        return _export_best(cfg, run.latest, 0.0, run.name, start_epoch=run.epoch)
    connect(verbose)
    nodes = alive_nodes()
    cfg = replace(cfg, cpus_per_worker=cfg.cpus_per_worker or auto_cpus_per_worker(
        cfg.workers, [n.get("CPU", 0.0) for n in nodes]))
    require_workers(cfg, nodes)
    print(f"raeae train: {source.description}; model {describe_network(cfg.model)}"
          f"{'; from ' + cfg.init if cfg.init else ''}")
    print(f"raeae train: run {run.name} ({'resumed at epoch ' + str(run.epoch) if run.resumed else 'new'}), "
          f"{cfg.workers} worker(s) x {cfg.cpus_per_worker:g} CPU{' + GPU' if cfg.gpu else ''}, "
          f"{budget_text(cfg.epochs, cfg.max_minutes)}")
    if not run.resumed:
        write_record(storage_path, cfg.storage, run.name, cfg.to_dict())
    with env_default(HEALTH_CHECK_ENV, HEALTH_CHECK_S), EpochPrinter(cfg) as printer:
        trainer = TorchTrainer(
            train_loop_per_worker,
            # The source goes through the object store once (an IDX source holds every image); each
            # worker reads its own share of it (see TrainingSource.train_share).
            train_loop_config={"cfg": cfg, "init_weights": weights, "progress_queue": printer.queue,
                               "val_pairs": pairs, "source": ray.put(source),
                               "storage": cfg.storage.with_environment()},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                                   resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=run.name, storage_path=storage_path,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=cfg.failures)),
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        state = ckpt.read_checkpoint_dir(d)
    return _export_best(cfg, state, fit_s, run.name, start_epoch=run.epoch)


def _export_best(cfg: TrainConfig, state: dict, fit_s: float, run_name: str, start_epoch: int) -> TrainResult:
    """Write a slim checkpoint (best weights, no optimizer) to ``cfg.output``."""
    progress = Progress.from_dict(state["progress"])
    history = list(progress.history)
    best = next((h for h in history if h["epoch"] == progress.best_epoch), state["metrics"])
    slim = {k: v for k, v in state.items() if k not in ("optimizer", "progress")}
    slim["model"] = progress.best_model or state["model"]
    slim["metrics"] = best
    slim["history"] = history
    slim["inference"] = {"stride": cfg.val_stride}
    buf_dir = tempfile.mkdtemp()
    local = ckpt.save(slim, buf_dir)
    fs, path = resolve(cfg.output, cfg.storage)
    with open(local, "rb") as f:
        write_bytes(fs, f"{path}/{ckpt.CHECKPOINT_FILE}", f.read())
    shutil.rmtree(buf_dir, ignore_errors=True)
    loop_s = float(state["metrics"].get("train_loop_s", 0.0))
    before = next((h.get("elapsed_s", 0.0) for h in history if h["epoch"] == start_epoch), 0.0)
    return TrainResult(checkpoint_uri=cfg.output, metrics=state["metrics"], best_val_psnr=best.get("val_psnr", math.nan),
                       best_val_psnr_noisy=best.get("val_psnr_noisy", math.nan), best_epoch=progress.best_epoch,
                       fit_s=fit_s, loop_s=loop_s, history=history, resumed_at=list(progress.resumed_at),
                       run_name=run_name, stopped=progress.stopped, epochs_trained=progress.epoch - start_epoch,
                       minutes_trained=(progress.elapsed_s - before) / 60)


def _deepened(have: ModelConfig, want: ModelConfig) -> ModelConfig:
    """``have`` with the hidden layers ``want`` adds after its own, where ``want`` only repeats ``have``'s
    last widths (encoder or decoder); else ``have`` (``--init`` keeps the checkpoint's network)."""
    def grown(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
        extends = old and len(new) > len(old) and new[:len(old)] == old and set(new[len(old):]) == {old[-1]}
        return new if extends else old
    hidden, decoder = grown(have.hidden, want.hidden), grown(have.decoder_hidden, want.decoder_hidden)
    if (hidden, decoder) != (have.hidden, have.decoder_hidden) and have.activation is not Activation.RELU:
        raise ValueError("--init with more hidden layers: added layers start as the identity, which only a "
                         f"relu network keeps (this one is {have.activation.value})")
    return replace(have, hidden=hidden, decoder_hidden=decoder)


def deepen(weights: dict, have: ModelConfig, want: ModelConfig) -> dict:
    """The weights of ``have`` as those of ``want`` (:func:`_deepened`): every old layer keeps its weights,
    each added hidden layer is the identity with zero bias. After a ReLU the values are never negative, so
    ReLU(identity) passes them unchanged and the deeper network computes exactly what ``have`` did."""
    out = {k: v for k, v in weights.items() if not k.startswith(("encoder.", "decoder."))}
    for part, old, new in (("encoder", have.hidden, want.hidden), ("decoder", have.decoder_hidden, want.decoder_hidden)):
        layers = len(old) + 1  # the Linear layers of this part before growing: its hidden layers and the last
        for k in range(layers):
            at = k if k < len(old) else len(new)  # the last layer moves past the added ones
            for name in ("weight", "bias"):
                out[f"{part}.{2 * at}.{name}"] = weights[f"{part}.{2 * k}.{name}"]
        for k in range(len(old), len(new)):
            out[f"{part}.{2 * k}.weight"] = torch.eye(new[k])
            out[f"{part}.{2 * k}.bias"] = torch.zeros(new[k])
    return out
