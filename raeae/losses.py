"""Losses of a training step: supervised (MSE or BCE, optionally weighed by each patch's noise level) and
self-supervised (Recorrupted-to-Recorrupted pairs or Noise2Void masking), and the once-per-run
decision of which self-supervised scheme an archive needs, taken for all ranks together."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from raeae.corrupt import IMPULSE_SHARE, blind_spot, estimate_sigma, impulse_share, masked_mse, recorrupt
from raeae.distributed import all_reduce, unwrap, world
from raeae.train_config import Loss, Scheme, TrainConfig


def sigma_weights(noisy: torch.Tensor, clean: torch.Tensor, power: float) -> torch.Tensor:
    """Per-patch loss weights ``(25/σ)^power`` from each flattened patch's own noise level σ (0-255, at
    least 5), scaled to mean 1 so the learning rate keeps its meaning."""
    level = (noisy - clean).float().pow(2).mean(1).sqrt().mul(255.0).clamp(min=5.0)
    w = (25.0 / level).pow(power)
    return w / w.mean()


def loss_of(model, noisy: torch.Tensor, clean: torch.Tensor, loss: Loss, weights: torch.Tensor | None = None,
          level: torch.Tensor | None = None, jpeg: torch.Tensor | None = None) -> torch.Tensor:
    module = unwrap(model)
    if loss is Loss.BCE and module.sigmoid_head:
        # On the logits: numerically stable, and the gradient does not vanish at saturated pixels.
        return F.binary_cross_entropy_with_logits(model(noisy, logits=True, level=level, jpeg=jpeg), clean)
    out = model(noisy, level=level, jpeg=jpeg)
    if loss is Loss.BCE:
        return F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), clean)
    if weights is not None:
        return ((out - clean).pow(2).mean(1) * weights).mean()
    return F.mse_loss(out, clean)


def self_supervised_loss(model, noisy: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The loss of one batch of noisy patches ``(N, C, p, p)`` under ``cfg.scheme``; its expectation
    is the error to the unknown clean patches plus a constant."""
    if cfg.scheme is Scheme.RECORRUPT:  # (AUTO is decided before training: resolve_self_supervision)
        inputs, targets = recorrupt(noisy, cfg.noise_sigma / 255.0, cfg.recorrupt_alpha, gen)
        return F.mse_loss(model(inputs.flatten(1)), targets.flatten(1))
    # Hide some pixels, predict them from their surroundings.
    masked, mask = blind_spot(noisy, cfg.mask_ratio, gen)
    return masked_mse(model(masked.flatten(1)), noisy.flatten(1), mask)


NOISE_SAMPLE = 256  # images per rank for the noise statistics: their medians settle long before that


def resolve_self_supervision(cfg: TrainConfig, images: list[torch.Tensor]) -> TrainConfig:
    """``cfg`` with ``--scheme auto`` decided and, for recorrupt, the noise σ filled in: the medians of
    per-image statistics, averaged over the ranks, so every rank makes the same decision and uses
    the same σ (ranks that trained different losses would average nonsense, or wait forever)."""
    if not cfg.self_supervised or cfg.scheme is Scheme.BLIND_SPOT:
        return cfg
    sample = images[:NOISE_SAMPLE]  # converted to float one image at a time: large photos add up
    ranks = world()[1]
    if cfg.scheme is Scheme.AUTO:
        share = all_reduce(float(np.median([impulse_share(x.float() / 255.0) for x in sample])) if sample else 0.0,
                            dist.ReduceOp.SUM) / ranks
        cfg = replace(cfg, scheme=Scheme.BLIND_SPOT if share > IMPULSE_SHARE else Scheme.RECORRUPT)
    if cfg.scheme is Scheme.BLIND_SPOT or cfg.noise_sigma > 0:
        return cfg
    sigma = all_reduce(float(np.median([estimate_sigma(x.float() / 255.0) for x in sample])) if sample else 0.0,
                        dist.ReduceOp.SUM) / ranks
    if sigma <= 0:
        raise ValueError("--scheme recorrupt: no noise found in the training images (estimated σ = 0); "
                         "give --noise-sigma, or use --scheme blind-spot")
    return replace(cfg, noise_sigma=sigma * 255.0)
