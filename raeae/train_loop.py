"""The training loop that runs on every Ray Train worker, cut into small named steps in the style of
pytorch/examples' DDP ``Trainer``:

* each worker reads its own share of the clean images (:meth:`raeae.data.TrainingSource.train_share`)
  and draws fresh random patches and fresh damage every epoch (:class:`raeae.patches.PatchSampler`,
  :class:`raeae.damaged_patches.DamagedPatchSampler`);
* :class:`EpochTrainer` runs an epoch's steps; rank 0 validates (:mod:`raeae.validation`) and
  reports a checkpoint every epoch;
* a re-run with the same ``storage_path`` and ``run_name`` resumes from the latest checkpoint (Ray
  Train V2); stopping (time budget, patience, epochs) is one collective decision (:func:`decide_stop`).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from raeae import checkpoint as ckpt
from raeae.corrupt import Noise, corrupt_with_level
from raeae.damaged_patches import DamagedEpoch, DamagedPatchSampler
from raeae.distributed import all_reduce, collective_device, unwrap, world
from raeae.losses import loss_of, resolve_self_supervision, self_supervised_loss, sigma_weights
from raeae.model import build_model
from raeae.patches import PatchSampler, dihedral
from raeae.train_config import Scheme, TrainConfig
from raeae.validation import validate_epoch
from raeae.worker import prepare_worker


def _tensors(images: list[np.ndarray]) -> list[torch.Tensor]:
    """uint8 H×W×C arrays -> uint8 ``(C, H, W)`` tensors (views of writable copies)."""
    return [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in images]


MIN_STEPS_PER_EPOCH = 100  # below this, per-epoch validation and checkpointing eat a small dataset's time


def make_sampler(images: list[torch.Tensor], cfg: TrainConfig, ranks: int = 1) -> PatchSampler | DamagedPatchSampler:
    """This worker's patch sampler: ``--patches-per-image``, or about one cover of each image per epoch
    and at least :data:`MIN_STEPS_PER_EPOCH` batches (measured: a 120-image archive of 48 px crops made
    4-step epochs, and 0.4 minutes of training went almost all to validation and checkpoints). JPEG
    damage is made on whole images, so it has a sampler of its own."""
    min_patches = 0 if cfg.patches_per_image else MIN_STEPS_PER_EPOCH * max(1, cfg.batch_size // ranks)
    if cfg.noise.noise is Noise.JPEG and not cfg.self_supervised:
        return DamagedPatchSampler(images, cfg.model.patch_size, cfg.noise, cfg.augment, cfg.patches_per_image,
                                   min_patches, margin=cfg.model.margin)
    return PatchSampler(images, cfg.model.side, cfg.patches_per_image, min_patches)


@dataclass(frozen=True)
class Progress:
    """A run's bookkeeping, carried from epoch to epoch and kept in every checkpoint (as a dict of plain
    types, so a checkpoint loads with ``weights_only``; ``raeae.runs`` and ``raeae.release`` read it)."""

    epoch: int = 0  # epochs done
    history: tuple = ()  # each epoch's numeric metrics
    best_score: float = -math.inf  # ranks epochs, higher is better: the validation PSNR or minus the self-supervised loss
    best_epoch: int = 0
    best_model: dict | None = None  # the best epoch's weights (rank 0)
    stopped: str = ""  # why training ended, once it has: time budget, patience, epochs
    resumed_at: tuple = ()  # epochs after which the run was resumed from a checkpoint
    elapsed_s: float = 0.0  # wall seconds of the whole run, resumes included

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "history": list(self.history), "best_score": self.best_score,
                "best_epoch": self.best_epoch, "best_model": self.best_model, "stopped": self.stopped,
                "resumed_at": list(self.resumed_at), "elapsed_s": self.elapsed_s}

    @classmethod
    def from_dict(cls, d: dict) -> "Progress":
        return cls(epoch=int(d["epoch"]), history=tuple(d.get("history", ())),
                   # checkpoints from before the score had its own name called it best_val_psnr
                   best_score=float(d.get("best_score", d.get("best_val_psnr", -math.inf))),
                   best_epoch=int(d.get("best_epoch", 0)), best_model=d.get("best_model"),
                   stopped=d.get("stopped", ""), resumed_at=tuple(d.get("resumed_at", ())),
                   elapsed_s=float(d.get("elapsed_s", 0.0)))


class EpochTrainer:
    """One worker's training state (model, optimiser, sampler, typed progress), with the loop cut into
    small named steps: :meth:`resume`, :meth:`run_epoch`, :meth:`validate`, :meth:`advance`, :meth:`save`."""

    def __init__(self, cfg: TrainConfig, model, optimizer, sampler: PatchSampler, device: torch.device):
        self.cfg, self.model, self.optimizer, self.sampler, self.device = cfg, model, optimizer, sampler, device
        self.progress = Progress()
        self.rank, self.world = world()
        # Same number of steps on every rank, or DDP's all-reduce waits forever on the longest one.
        self.batch = max(1, cfg.batch_size // self.world)
        self.steps = max(1, int(all_reduce(len(sampler), dist.ReduceOp.MIN)) // self.batch)

    def _batch(self, patches: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Noisy and clean flattened patches, and each patch's Gaussian σ in [0, 1] units (None for
        other corruptions)."""
        clean = patches.to(self.device, non_blocking=True).float().div_(255.0)
        if self.cfg.augment:
            clean = dihedral(clean, gen)
        noisy, level = corrupt_with_level(clean, self.cfg.noise, gen)
        return noisy.flatten(1), unwrap(self.model).center(clean.flatten(1)), level  # the target: inside the margin

    def _step_loss(self, patches: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        with self.cfg.precision.autocast(self.device):
            return self._step_loss_in(patches, gen).float()

    def _step_loss_in(self, patches: torch.Tensor | DamagedEpoch, gen: torch.Generator) -> torch.Tensor:
        if isinstance(patches, DamagedEpoch):  # damaged whole images, already flipped (DamagedPatchSampler)
            clean = patches.clean.to(self.device, non_blocking=True).float().div_(255.0).flatten(1)
            noisy = patches.damaged.to(self.device, non_blocking=True).float().div_(255.0).flatten(1)
            return loss_of(self.model, noisy, clean, self.cfg.loss, None, patches.level.to(self.device),
                         patches.jpeg.to(self.device))
        if not self.cfg.self_supervised:
            noisy, clean, level = self._batch(patches, gen)
            weights = (sigma_weights(unwrap(self.model).center(noisy), clean, self.cfg.sigma_balance)
                       if self.cfg.sigma_balance else None)
            return loss_of(self.model, noisy, clean, self.cfg.loss, weights, level)
        noisy = patches.to(self.device, non_blocking=True).float().div_(255.0)  # already noisy
        if self.cfg.augment:
            noisy = dihedral(noisy, gen)
        return self_supervised_loss(self.model, noisy, self.cfg, gen)

    def _set_lr(self, epoch: int, step: int, time_frac: float) -> None:
        """Cosine decay to 0 over the run: by epochs, or by the time budget if that ends first.
        ``time_frac`` is agreed by all ranks (all-reduced), so every rank steps with the same lr."""
        if not self.cfg.cosine:
            return
        epoch_frac = ((epoch - 1) + step / self.steps) / self.cfg.epochs if self.cfg.epochs else 0.0
        frac = min(1.0, max(epoch_frac, time_frac))
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    def run_epoch(self, epoch: int, clock: "Clock") -> dict:
        seed = self.cfg.seed * 1_000_003 + epoch * 1009 + self.rank
        gen = torch.Generator().manual_seed(seed)
        patches = self.sampler.sample(gen)
        # Noise, masks and flips are drawn where the batch lives: on a GPU from a CUDA generator, so
        # no random numbers cross the bus (a CPU generator cannot fill a CUDA tensor by itself).
        draw = gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(seed)
        self.model.train()
        total, steps, t0 = 0.0, 0, time.perf_counter()
        time_frac = clock.fraction_used()
        for step in range(self.steps):
            self._set_lr(epoch, step, time_frac)
            loss = self._step_loss(patches[step * self.batch:(step + 1) * self.batch], draw)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            steps += 1
            if step % 25 == 24 and clock.limited:
                # One collective look at the clock: every rank leaves at the same step.
                left = all_reduce(clock.left(), dist.ReduceOp.MIN)
                if left <= 0:
                    break
                time_frac = 1.0 - left / clock.budget_s
        seconds = time.perf_counter() - t0
        return {"train_loss": total / max(1, steps), "steps": steps, "epoch_s": seconds,
                "samples_per_s": steps * self.batch * self.world / max(seconds, 1e-9)}


    def resume(self) -> None:
        """Load the latest checkpoint of this run into the model and optimiser, if Ray Train has one,
        with its progress (a resume is recorded in it: a re-run, or Ray Train restarting failed workers)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            state = ckpt.read_checkpoint_dir(d)
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        progress = Progress.from_dict(state["progress"])
        self.progress = replace(progress, resumed_at=(*progress.resumed_at, progress.epoch))

    def validate(self, val: list[torch.Tensor], val_clean: list[torch.Tensor] | None) -> dict:
        metrics = validate_epoch(self.model, val, self.cfg, self.device, val_clean)
        if self.cfg.self_supervised:  # what --scheme auto chose, and the σ recorrupt used
            metrics["recorrupt"] = int(self.cfg.scheme is Scheme.RECORRUPT)
            if self.cfg.scheme is Scheme.RECORRUPT:
                metrics["noise_sigma"] = self.cfg.noise_sigma
        return metrics

    def advance(self, metrics: dict, clock: "Clock", stop_cfg: TrainConfig) -> None:
        """The epoch's bookkeeping, and the one collective decision whether to stop (``stop_cfg``: the
        config as given, whose epochs and patience count)."""
        # the run's wall seconds so far, in the epoch's history entry too: a release's training minutes and
        # a resumed run's "this time" are read from the history
        metrics["elapsed_s"] = clock.elapsed()
        progress = advance(self.progress, metrics, self.model)
        self.progress = replace(progress, stopped=decide_stop(stop_cfg, progress, clock), elapsed_s=metrics["elapsed_s"])

    def save(self, metrics: dict, cfg: TrainConfig) -> None:
        """Every rank reports; rank 0 attaches the checkpoint (DDP weights are identical on all ranks)."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            state = ckpt.checkpoint_state(self.model, cfg.model, noise=cfg.noise.to_dict(), train_config=cfg.to_dict(),
                                          metrics=metrics, optimizer=self.optimizer.state_dict(),
                                          progress=self.progress.to_dict())
            ckpt.save(state, d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


class Clock:
    """The run's time budget, counted over all its attempts: a resumed run goes on with what is left
    (``spent_s`` of wall time before this attempt, from the checkpoint), not a fresh budget."""

    def __init__(self, budget_s: float, spent_s: float = 0.0):
        self.budget_s, self.spent_s, self.started = budget_s, spent_s, time.time()

    @property
    def limited(self) -> bool:
        return math.isfinite(self.budget_s)

    def elapsed(self) -> float:
        return self.spent_s + time.time() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def fraction_used(self) -> float:
        return min(1.0, self.elapsed() / self.budget_s) if self.limited else 0.0


STOP_REASONS = ("time budget", "patience", "epochs")


def decide_stop(cfg: TrainConfig, progress: Progress, clock: Clock) -> str:
    """Whether to stop after this epoch, and why: ONE collective decision, taken at the same point on
    every rank. Each rank contributes what it knows (its own clock; rank 0 alone validates and knows
    the patience count), and one all-reduce (max) of the flags gives every rank the same answer.
    Deciding on each rank's own clock hung 2-worker runs: rank 0, later after validating, stopped
    while rank 1 went on into the next epoch's all-reduce and waited forever."""
    rank = world()[0]
    flags = torch.tensor([float(clock.limited and clock.left() <= 0),
                          float(rank == 0 and cfg.patience > 0
                                and progress.epoch - progress.best_epoch >= cfg.patience),
                          float(cfg.epochs > 0 and progress.epoch >= cfg.epochs)], dtype=torch.float64)
    if world()[1] > 1:
        flags = flags.to(collective_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return next((why for why, flag in zip(STOP_REASONS, flags.tolist()) if flag > 0), "")



def _announce(queue, metrics: dict) -> None:
    """Hand rank 0's epoch metrics to the driver, which prints their lines (:class:`raeae.training.EpochPrinter`)."""
    if queue is None or world()[0] != 0:
        return
    try:
        queue.put_nowait(metrics)
    except Exception:  # noqa: BLE001 - a full or gone queue costs a progress line, never the run
        pass


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: runs on every worker."""
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    prepare_worker(max(1, int(cfg.cpus_per_worker)))  # the CPUs Ray reserved for us; see raeae.worker
    device = ray.train.torch.get_device()
    source, storage = ray.get(config["source"]), config["storage"]
    rank, ranks = world()
    images = _tensors(source.train_share(rank, ranks, cfg.model.channels, storage))
    if not images:  # every file of this rank's share failed to decode (each was named on its own line)
        raise ValueError(f"training worker {rank}: none of its share of {source.uri} could be read")
    # The loss's config carries the scheme and noise σ decided from the data; checkpoints keep the
    # config as given, so a resume compares like with like (the decision is in each epoch's metrics).
    loss_cfg = resolve_self_supervision(cfg, images)
    sampler = make_sampler(images, cfg, world()[1])
    model = build_model(cfg.model)
    if config.get("init_weights") is not None:
        model.load_state_dict(config["init_weights"])  # fine-tuning: start from a trained model
    else:
        model.init_output_bias(sampler.mean_patch())  # DDP then broadcasts rank 0's weights to all ranks
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = EpochTrainer(loss_cfg, model, optimizer, sampler, device)
    trainer.resume()
    trainer.model = ray.train.torch.prepare_model(model)  # DDP: wrapped once the weights are in place
    optimizer_to(optimizer, device)
    val, val_clean = [], None
    if world()[0] == 0:
        if config.get("val_pairs"):  # self-supervised with clean copies: (noisy, clean) from the driver
            val = [torch.from_numpy(n.copy()).permute(2, 0, 1) for n, _ in config["val_pairs"]]
            val_clean = [torch.from_numpy(c.copy()).permute(2, 0, 1) for _, c in config["val_pairs"]]
        else:
            val = _tensors(source.validation(cfg.model.channels, storage))
    clock = Clock(cfg.budget_s, spent_s=trainer.progress.elapsed_s)
    loop_s = 0.0
    while not trainer.progress.stopped:
        epoch = trainer.progress.epoch + 1
        stats = trainer.run_epoch(epoch, clock)
        loop_s += stats["epoch_s"]
        metrics = {"epoch": epoch, **stats, **trainer.validate(val, val_clean)}
        trainer.advance(metrics, clock, cfg)
        p = trainer.progress
        metrics.update(best_score=p.best_score, best_epoch=p.best_epoch, train_loop_s=loop_s, elapsed_s=p.elapsed_s,
                       stopped=p.stopped)
        trainer.save(metrics, cfg)
        _announce(config.get("progress_queue"), metrics)


def advance(progress: Progress, metrics: dict, model) -> Progress:
    """Bookkeeping after an epoch: history, and the best weights so far (rank 0 validates)."""
    history = (*progress.history, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    progress = replace(progress, epoch=metrics["epoch"], history=history)
    # The score ranks epochs, higher is better: the validation PSNR, or minus the self-supervised loss when
    # no clean copy exists (a loss, never reported as a PSNR: the result's PSNRs come from the best epoch's metrics).
    score = metrics.get("val_psnr", -metrics.get("val_ss_loss", math.inf))
    if world()[0] == 0 and score > progress.best_score:
        best = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        progress = replace(progress, best_score=score, best_epoch=metrics["epoch"], best_model=best)
    return progress


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a resumed optimizer's state to the training device."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
