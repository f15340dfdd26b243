"""Validation, on rank 0 after every epoch: held-out images restored whole, through the same tiling as a
restore, scored against their clean copies (or, without clean copies, the self-supervised loss)."""

from __future__ import annotations

from dataclasses import replace

import torch

from raeae.corrupt import Noise, corrupt
from raeae.distributed import unwrap
from raeae.inference import noise_level_of
from raeae.jpeg import PHASE_STEP, compress, context, ijg_scale
from raeae.losses import self_supervised_loss
from raeae.metrics import batch_psnr
from raeae.patches import Blend, PatchSampler, restore_tiles
from raeae.train_config import TrainConfig


@torch.inference_mode()
def validate(model, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device) -> dict:
    """PSNR (dB) of the noisy held-out images and of the model's whole-image restorations.

    The noise is drawn from a fixed seed, so every epoch is compared on the same noisy images.
    Images of equal size are restored together in one batch.
    """
    module = unwrap(model)
    if cfg.noise.noise is Noise.JPEG:
        return validate_jpeg(module, val, cfg, device)
    module.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    noise = cfg.noise
    if noise.blind:
        # Blind training: validate at the middle of the range. Random σ per image let a few nearly
        # clean images (σ≈0, 40+ dB) dominate the mean, which then fell while the model improved
        # (measured on the colour model: 26.48 -> 26.21 dB over 10 epochs as the train loss fell 14 %).
        noise = replace(noise, sigma=(noise.sigma + noise.sigma_max) / 2, sigma_max=0.0)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for img in val:
        groups.setdefault(tuple(img.shape), []).append(img)
    noisy_psnr, model_psnr = [], []
    for imgs in groups.values():
        clean = torch.stack(imgs).to(device).float().div_(255.0)
        noisy = corrupt(clean, noise, gen).clamp(0, 1).mul(255).round().div(255)
        # Gaussian: the true σ (validation ranks epochs, it does not test the estimator); shot noise has
        # no one σ: the images' estimate, as restore tells it
        level = noise.sigma / 255.0 if noise.noise is Noise.GAUSSIAN else noise_level_of(noisy) / 255.0
        restored = restore_tiles(lambda x: module(x, level=level).clamp(0, 1), noisy, cfg.model.patch_size,
                                 cfg.val_stride, blend=Blend.GAUSSIAN, margin=cfg.model.margin)
        noisy_psnr.append(batch_psnr(clean, noisy))
        model_psnr.append(batch_psnr(clean, restored))
    module.train()
    return {"val_psnr_noisy": float(torch.cat(noisy_psnr).mean()), "val_psnr": float(torch.cat(model_psnr).mean())}


@torch.inference_mode()
def validate_jpeg(module, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device) -> dict:
    """PSNR (dB) of the held-out images compressed at the middle of the quality range (no noise) and of
    the model's restorations, tiled as restore tiles them: stride 4 on the block grid, each image's
    noise level estimated as restore estimates it."""
    module.eval()
    quality = (cfg.noise.quality + cfg.noise.quality_max) // 2
    noisy_psnr, model_psnr = [], []
    for img in val:
        clean = img.to(device).float().div_(255.0).unsqueeze(0)
        pixels = img.permute(1, 2, 0).numpy()
        damaged = compress(pixels[..., 0] if pixels.shape[2] == 1 else pixels, quality)
        noisy = torch.from_numpy(damaged.reshape(pixels.shape)).permute(2, 0, 1).float().div_(255.0).unsqueeze(0).to(device)
        level = noise_level_of(noisy) / 255.0
        restored = restore_tiles(lambda x, ys, xs: module(x, level=level, jpeg=context(ijg_scale(quality), ys, xs).to(device))
                                 .clamp(0, 1), noisy, cfg.model.patch_size, PHASE_STEP, blend=Blend.GAUSSIAN,
                                 positions=True, margin=cfg.model.margin)
        noisy_psnr.append(batch_psnr(clean, noisy))
        model_psnr.append(batch_psnr(clean, restored))
    module.train()
    return {"val_psnr_noisy": float(torch.cat(noisy_psnr).mean()), "val_psnr": float(torch.cat(model_psnr).mean())}


@torch.inference_mode()
def validate_self_supervised(model, val: list[torch.Tensor], cfg: TrainConfig, device: torch.device,
                             clean: list[torch.Tensor] | None = None) -> dict:
    """Validation without clean images: the self-supervised loss on fixed patches of the held-out noisy
    images (it tracks the error to the unknown clean image, up to a constant); with ``clean``
    copies, also the PSNR of the noisy images and of their whole-image restorations."""
    module = unwrap(model)
    module.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    sampler = PatchSampler(val, cfg.model.patch_size, 64)
    noisy_patches = sampler.sample(gen).to(device).float().div_(255.0)
    out = {"val_ss_loss": float(self_supervised_loss(module, noisy_patches, cfg, gen))}
    if clean:
        noisy_db, model_db = [], []
        for n_img, c_img in zip(val, clean):
            noisy = n_img.unsqueeze(0).to(device).float().div_(255.0)
            ref = c_img.unsqueeze(0).to(device).float().div_(255.0)
            restored = restore_tiles(lambda x: module(x).clamp(0, 1), noisy, cfg.model.patch_size, cfg.val_stride,
                                 blend=Blend.GAUSSIAN)
            noisy_db.append(batch_psnr(ref, noisy))
            model_db.append(batch_psnr(ref, restored))
        out.update(val_psnr_noisy=float(torch.cat(noisy_db).mean()), val_psnr=float(torch.cat(model_db).mean()))
    module.train()
    return out


def validate_epoch(model, val, cfg: TrainConfig, device, val_clean) -> dict:
    if not val:
        return {}
    if cfg.self_supervised:
        return validate_self_supervised(model, val, cfg, device, val_clean)
    return validate(model, val, cfg, device)
