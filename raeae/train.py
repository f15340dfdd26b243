"""Training on Ray Train: data-parallel DDP over ``TorchTrainer`` workers (CPU locally, GPU on a cluster).

The loop in :func:`train_loop_per_worker` is a plain PyTorch loop cut into small named steps
(``_train_epoch``, ``_validate``, ``_save``) in the style of pytorch/examples' DDP ``Trainer``:

* each worker gets a shard of the clean images from Ray Data and draws fresh random patches and
  fresh noise every epoch (:class:`raeae.patches.PatchSampler`, :func:`raeae.corrupt.corrupt`);
* rank 0 restores the held-out images whole, through the same tiling as inference, and reports the
  validation PSNR of the noisy input and of the model every epoch, with a checkpoint;
* a re-run with the same ``storage_path`` and ``run_name`` resumes from the latest checkpoint
  (Ray Train V2 semantics); early stopping and the time budget are agreed on by all ranks.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from raeae import checkpoint as ckpt
from raeae.corrupt import NoiseConfig, corrupt
from raeae.data import arrays_from_rows, load_source
from raeae.inference import default_stride
from raeae.metrics import batch_psnr
from raeae.model import ModelConfig, build_model, parameter_count
from raeae.patches import PatchSampler, dihedral, restore_tiles
from raeae.storage import StorageConfig, resolve, write_bytes


class Loss(enum.Enum):
    MSE = "mse"  # what PSNR measures; the usual choice for natural images
    BCE = "bce"  # cross-entropy on pixel intensities; the classic choice for MNIST-like digits


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Model and noise are nested configs stored in checkpoints."""

    data: str = field(default="", metadata={"help": "clean training images: an MNIST IDX folder/file or a "
                                                    "folder/prefix of images (local, s3://, gs://...)"})
    output: str = field(default="", metadata={"help": "folder (local or s3://) that receives the best "
                                                      "checkpoint, for `raeae restore --model`"})
    model: ModelConfig = ModelConfig()
    noise: NoiseConfig = NoiseConfig()
    storage: StorageConfig = StorageConfig()
    epochs: int = field(default=10, metadata={"help": "passes over the training patches (10 converges the "
                                                      "seed MNIST net to within ~0.5 dB)"})
    max_minutes: float = field(default=0.0, metadata={
        "help": "stop after this many minutes of training in this attempt (0 = no limit)"})
    patience: int = field(default=5, metadata={
        "help": "stop after this many epochs without a better validation PSNR (0 = never)"})
    batch_size: int = field(default=256, metadata={
        "help": "patches per optimizer step over all workers (each of N workers takes 1/N), so results "
                "do not depend on the worker count (seed: 256)"})
    lr: float = field(default=3e-3, metadata={
        "help": "Adam learning rate (3e-3: +1 dB over Adam's 1e-3 in 2 MNIST epochs on these shallow nets)"})
    loss: Loss = field(default=Loss.MSE, metadata={"help": "reconstruction loss"})
    cosine: bool = field(default=False, metadata={
        "help": "cosine-decay the learning rate to 0 over the run (epochs, or --max-minutes if that ends "
                "first); worth it for long runs, off for short ones"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (data-parallel DDP ranks)"})
    gpu: bool = field(default=False, metadata={"help": "one GPU per worker (on a GPU cluster)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved per worker; torch uses "
                                                                  "that many threads"})
    patches_per_image: int = field(default=0, metadata={
        "help": "random patches per image per epoch (0 = about one non-overlapping cover of each image)"})
    augment: bool = field(default=False, metadata={
        "help": "random flips and 90° rotations of patches: helps on photographs, hurts on oriented "
                "content such as digits (measured: -2.9 dB after 2 MNIST epochs), so it is opt-in"})
    stride: int = field(default=0, metadata={
        "help": "tile stride for whole-image validation, recorded as restore's default (0 = patch/2)"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of images held out for validation"})
    seed: int = field(default=0, metadata={"help": "seed for the split, patches, noise and init"})
    run_name: str = field(default="", metadata={
        "help": "Ray Train run name; re-running with the same name and storage path resumes "
                "(default: derived from data, model, noise and seed, so identical re-runs resume)"})
    storage_path: str = field(default="runs/ray", metadata={
        "help": "where Ray Train keeps checkpoints (local or s3://; on a multi-node cluster use shared "
                "or object storage)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "most recent checkpoints kept; each also "
                                                               "carries the best weights so far"})
    failures: int = field(default=2, metadata={"help": "worker failures survived by restarting from the "
                                                       "last checkpoint"})

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
                  (self.batch_size >= self.workers,
                   f"batch_size ({self.batch_size}) must be >= workers ({self.workers}): it is split across them"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
                  (self.max_minutes >= 0, f"max_minutes must be >= 0, got {self.max_minutes}"),
                  (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
                  (0 <= self.stride <= self.model.patch_size,
                   f"stride must be in [0, patch size {self.model.patch_size}], got {self.stride}"),
                  (not (self.loss is Loss.BCE and self.model.residual),
                   "loss bce needs a sigmoid output in [0,1]; residual outputs are unbounded - use mse")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def val_stride(self) -> int:
        return self.stride or default_stride(self.model.patch_size)

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        key = json.dumps([self.data, self.model.to_dict(), self.noise.to_dict(), self.seed, self.loss.value])
        return "train-" + hashlib.sha256(key.encode()).hexdigest()[:10]

    def to_dict(self) -> dict:
        return {"data": self.data, "output": self.output, "model": self.model.to_dict(),
                "noise": self.noise.to_dict(), "storage": self.storage.to_dict(), "epochs": self.epochs,
                "max_minutes": self.max_minutes, "patience": self.patience, "batch_size": self.batch_size,
                "lr": self.lr, "cosine": self.cosine, "loss": self.loss.value, "workers": self.workers, "gpu": self.gpu,
                "patches_per_image": self.patches_per_image, "augment": self.augment, "stride": self.stride,
                "val_fraction": self.val_fraction, "seed": self.seed, "run_name": self.resolved_run_name()}


# --- the worker loop, in small steps ----------------------------------------------------------------

def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(value: float, op) -> float:
    if _world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return float(t.item())


def _images(shard, channels: int) -> list[torch.Tensor]:
    """Materialise a dataset shard as a list of uint8 ``(C, H, W)`` tensors."""
    out = []
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        out += [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays_from_rows(batch)]
    return out


def _loss(model, noisy: torch.Tensor, clean: torch.Tensor, loss: Loss) -> torch.Tensor:
    module = model.module if hasattr(model, "module") else model
    if loss is Loss.BCE and module.sigmoid_head:
        # On the logits: numerically stable, and the gradient does not vanish at saturated pixels.
        return F.binary_cross_entropy_with_logits(model(noisy, logits=True), clean)
    out = model(noisy)
    if loss is Loss.BCE:
        return F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), clean)
    return F.mse_loss(out, clean)


class EpochTrainer:
    """One worker's training state, with the loop cut into small named steps."""

    def __init__(self, cfg: TrainConfig, model, optimizer, sampler: PatchSampler, device: torch.device):
        self.cfg, self.model, self.optimizer, self.sampler, self.device = cfg, model, optimizer, sampler, device
        rank, world = _world()
        self.rank, self.world = rank, world
        # Same number of steps on every rank, or DDP's all-reduce waits forever on the longest one.
        self.batch = max(1, cfg.batch_size // world)
        self.steps = max(1, int(_all_reduce(len(sampler), dist.ReduceOp.MIN)) // self.batch)

    def _batch(self, patches: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clean = patches.to(self.device, non_blocking=True).float().div_(255.0)
        if self.cfg.augment:
            clean = dihedral(clean, gen)
        noisy = corrupt(clean, self.cfg.noise, gen)
        return noisy.flatten(1), clean.flatten(1)

    def _set_lr(self, epoch: int, step: int, time_frac: float) -> None:
        """Cosine decay to 0 over the run: by epochs, or by the time budget if that ends first.
        ``time_frac`` is agreed by all ranks (all-reduced), so every rank steps with the same lr."""
        if not self.cfg.cosine:
            return
        frac = min(1.0, max(((epoch - 1) + step / self.steps) / self.cfg.epochs, time_frac))
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    def run_epoch(self, epoch: int, deadline: float, budget_s: float = math.inf) -> dict:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch * 1009 + self.rank)
        patches = self.sampler.sample(gen)
        self.model.train()
        total, steps, t0 = 0.0, 0, time.perf_counter()
        time_frac = 0.0
        for step in range(self.steps):
            self._set_lr(epoch, step, time_frac)
            batch = patches[step * self.batch:(step + 1) * self.batch]
            noisy, clean = self._batch(batch, gen)
            loss = _loss(self.model, noisy, clean, self.cfg.loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            steps += 1
            if step % 25 == 24 and math.isfinite(deadline):
                left = _all_reduce(deadline - time.time(), dist.ReduceOp.MIN)
                if left <= 0:
                    break  # time budget spent: every rank leaves at the same step
                time_frac = 1.0 - left / budget_s
        seconds = time.perf_counter() - t0
        return {"train_loss": total / max(1, steps), "steps": steps, "epoch_s": seconds,
                "samples_per_s": steps * self.batch * self.world / max(seconds, 1e-9)}


@torch.inference_mode()
def validate(model, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device) -> dict:
    """PSNR (dB) of the noisy held-out images and of the model's whole-image restorations.

    The noise is drawn from a fixed seed, so every epoch is compared on the same noisy images.
    Images of equal size are restored together in one batch.
    """
    module = model.module if hasattr(model, "module") else model
    module.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for img in val:
        groups.setdefault(tuple(img.shape), []).append(img)
    noisy_psnr, model_psnr = [], []
    for imgs in groups.values():
        clean = torch.stack(imgs).to(device).float().div_(255.0)
        noisy = corrupt(clean, cfg.noise, gen).clamp(0, 1).mul(255).round().div(255)
        restored = restore_tiles(lambda x: module(x).clamp(0, 1), noisy, cfg.model.patch_size, cfg.val_stride)
        noisy_psnr.append(batch_psnr(clean, noisy))
        model_psnr.append(batch_psnr(clean, restored))
    module.train()
    return {"val_psnr_noisy": float(torch.cat(noisy_psnr).mean()), "val_psnr": float(torch.cat(model_psnr).mean())}


def _resume_state(model, optimizer) -> dict:
    """Load the latest checkpoint of this run, if Ray Train has one; returns its bookkeeping."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": 0, "history": [], "best_val_psnr": -math.inf, "best_epoch": 0, "best_model": None,
                "stopped": "", "resumed_at": []}
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, ckpt.CHECKPOINT_FILE), "rb") as f:
            state = ckpt.parse(f.read(), d)
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    progress = state["progress"]
    # A record of every resume (a re-run, or Ray Train restarting failed workers), for the history.
    return {**progress, "resumed_at": [*progress.get("resumed_at", []), progress["epoch"]]}


def _save_and_report(model, optimizer, cfg: TrainConfig, progress: dict, metrics: dict) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (DDP weights are identical on all ranks)."""
    import ray.train

    if _world()[0] != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        state = ckpt.checkpoint_state(model, cfg.model, noise=cfg.noise.to_dict(), train_config=cfg.to_dict(),
                                      metrics=metrics, optimizer=optimizer.state_dict(), progress=progress)
        ckpt.save(state, d)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: runs on every worker."""
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    started = time.time()
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))  # match the CPUs Ray reserved for us
    device = ray.train.torch.get_device()
    sampler = PatchSampler(_images(ray.train.get_dataset_shard("train"), cfg.model.channels),
                           cfg.model.patch_size, cfg.patches_per_image)
    model = build_model(cfg.model)
    model.init_output_bias(sampler.mean_patch())  # DDP then broadcasts rank 0's weights to all ranks
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    progress = _resume_state(model, optimizer)
    model = ray.train.torch.prepare_model(model)
    optimizer_to(optimizer, device)
    val = _images(ray.train.get_dataset_shard("val"), cfg.model.channels) if _world()[0] == 0 else []
    trainer = EpochTrainer(cfg, model, optimizer, sampler, device)
    loop_s = 0.0
    for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
        if progress["stopped"]:
            break
        stats = trainer.run_epoch(epoch, deadline, cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf)
        loop_s += stats["epoch_s"]
        metrics = {"epoch": epoch, **stats, **(validate(model, val, cfg, device) if val else {})}
        progress = _advance(progress, metrics, model, cfg, time.time() > deadline)
        metrics.update(best_val_psnr=progress["best_val_psnr"], best_epoch=progress["best_epoch"],
                       train_loop_s=loop_s, stopped=progress["stopped"])
        _save_and_report(model, optimizer, cfg, progress, metrics)


def _advance(progress: dict, metrics: dict, model, cfg: TrainConfig, out_of_time: bool) -> dict:
    """Bookkeeping after an epoch: best weights, history, and whether to stop (agreed by all ranks)."""
    module = model.module if hasattr(model, "module") else model
    p = dict(progress)
    p["epoch"] = metrics["epoch"]
    p["history"] = [*progress["history"], {k: v for k, v in metrics.items() if isinstance(v, (int, float))}]
    if _world()[0] == 0 and metrics.get("val_psnr", -math.inf) > p["best_val_psnr"]:
        p["best_val_psnr"], p["best_epoch"] = metrics["val_psnr"], metrics["epoch"]
        p["best_model"] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    patience_out = cfg.patience > 0 and p["epoch"] - p["best_epoch"] >= cfg.patience
    stop = _all_reduce(float(patience_out and _world()[0] == 0), dist.ReduceOp.MAX) > 0
    p["stopped"] = "time budget" if out_of_time else ("patience" if stop else "")
    return p


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a resumed optimizer's state to the training device."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)


# --- the driver ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    checkpoint_uri: str  # the best model, in cfg.output
    metrics: dict  # the last epoch's metrics
    best_val_psnr: float
    best_val_psnr_noisy: float
    best_epoch: int
    fit_s: float  # wall time of TorchTrainer.fit()
    loop_s: float  # time inside the training loops (the rest of fit_s is Ray's overhead)
    history: list
    resumed_at: list  # epochs after which this run was resumed from a checkpoint


def train(cfg: TrainConfig) -> TrainResult:
    """Train on Ray Train and write the best checkpoint to ``cfg.output``. Ray must be initialised
    (``ray.init()``) or is started locally."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not cfg.data:
        raise ValueError("--data is required: an MNIST IDX folder or a folder of clean images")
    if not cfg.output:
        raise ValueError("--output is required: where the best checkpoint goes")
    source = load_source(cfg.data, cfg.model.channels, cfg.val_fraction, cfg.seed, cfg.storage)
    print(f"raeae train: {source.description}; model {cfg.model.features}->{list(cfg.model.hidden)}->"
          f"{cfg.model.latent}->{list(cfg.model.decoder_hidden)}->{cfg.model.features} "
          f"({parameter_count(build_model(cfg.model)):,} parameters); run {cfg.resolved_run_name()}")
    if not ray.is_initialized():
        ray.init()
    train_ds, val_ds = source.datasets(cfg.model.channels, cfg.storage)
    storage_path = cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.resolved_run_name(), storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.failures)),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, ckpt.CHECKPOINT_FILE), "rb") as f:
            state = ckpt.parse(f.read(), d)
    return _export_best(cfg, state, fit_s)


def _export_best(cfg: TrainConfig, state: dict, fit_s: float) -> TrainResult:
    """Write a slim checkpoint (best weights, no optimizer) to ``cfg.output``."""
    progress = state["progress"]
    best_epoch = progress["best_epoch"]
    best = next((h for h in progress["history"] if h["epoch"] == best_epoch), state["metrics"])
    slim = {k: v for k, v in state.items() if k not in ("optimizer", "progress")}
    slim["model"] = progress["best_model"] or state["model"]
    slim["metrics"] = best
    slim["history"] = progress["history"]
    slim["inference"] = {"stride": cfg.val_stride}
    buf_dir = tempfile.mkdtemp()
    local = ckpt.save(slim, buf_dir)
    fs, path = resolve(cfg.output, cfg.storage)
    with open(local, "rb") as f:
        write_bytes(fs, f"{path}/{ckpt.CHECKPOINT_FILE}", f.read())
    loop_s = float(state["metrics"].get("train_loop_s", 0.0))
    return TrainResult(checkpoint_uri=cfg.output, metrics=state["metrics"], best_val_psnr=best.get("val_psnr", math.nan),
                       best_val_psnr_noisy=best.get("val_psnr_noisy", math.nan), best_epoch=best_epoch,
                       fit_s=fit_s, loop_s=loop_s, history=progress["history"],
                       resumed_at=list(progress.get("resumed_at", [])))
