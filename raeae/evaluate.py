"""Measuring restoration quality: PSNR/SSIM of the noisy input, the model and classical denoisers
(scikit-image TV, wavelet, NL-means) on the very same noisy images."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from raeae.checkpoint import AUTO, RunModels, model_from_state, parse, recommended_stride
from raeae.corrupt import Noise, NoiseConfig, corrupt
from raeae.data import load_images
from raeae.images import encode_png
from raeae.inference import pick_model, restore_array, to_pixels, to_tensor
from raeae.metrics import psnr, ssim
from raeae.patches import Blend
from raeae.storage import StorageConfig


@dataclass(frozen=True)
class EvaluateConfig:
    """Compare a model with classical denoisers on clean images corrupted with a known noise."""

    model: str = field(default=AUTO, metadata={"help": "checkpoint folder or model.pt, or builtin:auto / "
                                                       "builtin:NAME"})
    data: str = field(default="", metadata={"help": "folder of clean images, or an IDX folder (its t10k split)"})
    noise: NoiseConfig = NoiseConfig()
    seed: int = field(default=0, metadata={"help": "seed of the noise (the same noisy images for every method)"})
    limit: int = field(default=0, metadata={"help": "evaluate only the first N images (0 = all)"})
    stride: int = field(default=0, metadata={"help": "tile stride (0 = the checkpoint's recommendation)"})
    blend: Blend = field(default=Blend.GAUSSIAN, metadata={"help": "tile blending, as in restore"})
    ensemble: bool = field(default=False, metadata={"help": "8 flips/rotations averaged, as in restore"})
    tell_sigma: bool = field(default=False, metadata={
        "help": "models trained with --noise-input: tell them the true σ of the noise instead of letting them "
                "estimate it from each image as restore does (the blind score is the default)"})
    baselines: bool = field(default=True, metadata={"help": "also run TV, wavelet and NL-means"})
    output: str = field(default="runs/evaluate", metadata={"help": "local folder for evaluate.json and grid.png"})
    grid_images: int = field(default=4, metadata={"help": "images shown in the before/after grid"})
    restored: str = field(default="", metadata={
        "help": "instead of running the model, score a `raeae restore`/`nightly` output: each ok row "
                "against the clean image in --data with the same file stem, and its source as the noisy input"})
    storage: StorageConfig = StorageConfig()

    def __post_init__(self) -> None:
        if self.tell_sigma and (self.noise.noise is not Noise.GAUSSIAN or self.noise.blind):
            raise ValueError("--tell-sigma tells the model one known σ: it needs --noise gaussian and no --sigma-max")


def make_noisy(clean: np.ndarray, noise: NoiseConfig, seed: int) -> np.ndarray:
    """The stored noisy image: corruption, clipping and 8-bit quantisation, as an archive would hold it."""
    gen = torch.Generator().manual_seed(seed)
    x = to_tensor(clean).unsqueeze(0)
    return to_pixels(corrupt(x, NoiseConfig(**{**noise.__dict__, "clip": True}), gen)[0], squeeze=clean.ndim == 2)


def _sigma(noise: NoiseConfig, noisy: np.ndarray) -> float:
    """Noise level for the classical methods, on [0, 1]: the true σ when known (as BM3D is
    benchmarked), else scikit-image's estimate."""
    if noise.noise is Noise.GAUSSIAN and not noise.blind:
        return noise.sigma / 255.0
    from skimage.restoration import estimate_sigma

    return float(np.mean(estimate_sigma(noisy.astype(np.float64) / 255.0,
                                        channel_axis=2 if noisy.ndim == 3 else None)))


def classical(sigma: float, channel_axis: int | None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """scikit-image's TV (Chambolle), wavelet (BayesShrink) and NL-means with standard settings for a
    known σ (on [0, 1]); each maps a float image in [0, 1] to its estimate."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

    return {
        "TV (Chambolle)": lambda x: denoise_tv_chambolle(x, weight=0.9 * sigma, channel_axis=channel_axis),
        "wavelet (BayesShrink)": lambda x: denoise_wavelet(x, sigma=sigma, method="BayesShrink", mode="soft",
                                                           rescale_sigma=True, channel_axis=channel_axis),
        "NL-means": lambda x: denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                               fast_mode=True, channel_axis=channel_axis),
    }


def _grid(rows: list[list[np.ndarray]], labels: list[str], size: int = 256) -> np.ndarray:
    """Centre crops of ``size``×``size`` in a grid (gray shown as RGB), each column titled."""
    from PIL import Image, ImageDraw

    def crop(a: np.ndarray) -> np.ndarray:
        a = a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
        a = a[..., :3]
        h, w = a.shape[:2]
        s = min(size, h, w)
        y, x = (h - s) // 2, (w - s) // 2
        out = np.full((size, size, 3), 255, np.uint8)
        out[:s, :s] = a[y:y + s, x:x + s]
        return out
    pad, title = 4, 18
    lines = [np.concatenate(sum([[crop(a), np.full((size, pad, 3), 255, np.uint8)] for a in r], [])[:-1], axis=1)
             for r in rows]
    width = max(l.shape[1] for l in lines)
    body = np.concatenate(sum([[l, np.full((pad, width, 3), 255, np.uint8)] for l in lines], [])[:-1], axis=0)
    canvas = Image.new("RGB", (width, body.shape[0] + title), "white")
    canvas.paste(Image.fromarray(body), (0, title))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((i * (size + pad) + 4, 3), label, fill="black")  # Pillow's built-in font: no font files needed
    return np.asarray(canvas)


def evaluate(cfg: EvaluateConfig, printer: Callable[[str], None] = print) -> dict:
    """Run every method on the same noisy images; print a Markdown table; write JSON and a grid."""
    if cfg.restored:
        return evaluate_restored(cfg, printer)
    if not cfg.model or not cfg.data:
        raise ValueError("--model and --data are required")
    run_models = RunModels.read(cfg.model, cfg.storage)
    states = [parse(b, cfg.model) for b in run_models.blobs]
    models = [model_from_state(st) for st in states]
    model_id = run_models.model_id
    strides = {id(m): recommended_stride(st, cfg.stride) for m, st in zip(models, states)}
    images = load_images(cfg.data, None, cfg.storage, limit=cfg.limit)
    if not images:
        raise ValueError(f"{cfg.data}: no images")
    scores: dict[str, list[tuple[float, float]]] = {}
    seconds: dict[str, float] = {}
    grid_rows = []

    def add(name: str, clean: np.ndarray, out: np.ndarray, dt: float) -> None:
        scores.setdefault(name, []).append((psnr(clean, out), ssim(clean, out)))
        seconds[name] = seconds.get(name, 0.0) + dt

    for i, (name, clean) in enumerate(images):
        noisy = make_noisy(clean, cfg.noise, cfg.seed + i)
        add("noisy input", clean, noisy, 0.0)
        t0 = time.perf_counter()
        model = pick_model(models, noisy)
        restored = restore_array(model, noisy, strides[id(model)], blend=cfg.blend, ensemble=cfg.ensemble,
                                 noise_level=cfg.noise.sigma if cfg.tell_sigma else None)
        add("raeae", clean, restored, time.perf_counter() - t0)
        outputs = {}
        if cfg.baselines:
            x = noisy.astype(np.float64) / 255.0
            for method, fn in classical(_sigma(cfg.noise, noisy), 2 if x.ndim == 3 else None).items():
                t0 = time.perf_counter()
                outputs[method] = np.clip(fn(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)
                add(method, clean, outputs[method], time.perf_counter() - t0)
        if i < cfg.grid_images:
            grid_rows.append([clean, noisy, restored, outputs])
    best = max((k for k in scores if k not in ("noisy input", "raeae")),
               key=lambda k: np.mean([p for p, _ in scores[k]]), default=None)
    result = {"model": cfg.model, "model_id": model_id, "data": cfg.data, "images": len(images),
              "noise": cfg.noise.to_dict(), "seed": cfg.seed,
              "methods": {k: {"psnr": float(np.mean([p for p, _ in v])), "ssim": float(np.mean([s for _, s in v])),
                              "seconds": round(seconds[k], 3)} for k, v in scores.items()}}
    os.makedirs(cfg.output, exist_ok=True)
    with open(os.path.join(cfg.output, "evaluate.json"), "w") as f:
        json.dump(result, f, indent=2)
    grid_path = os.path.join(cfg.output, "grid.png")
    labels = ["clean", f"noisy ({cfg.noise.noise.value})", "raeae"] + ([f"best classical: {best}"] if best else [])
    grid = _grid([r[:3] + ([r[3][best]] if best else []) for r in grid_rows], labels)
    with open(grid_path, "wb") as f:
        f.write(encode_png(grid, 6))
    result["grid"] = grid_path
    printer(markdown_table(result))
    printer(f"grid ({' | '.join(labels)}): {grid_path}")
    return result


def markdown_table(result: dict) -> str:
    n = result["noise"]
    level = f"σ={n['sigma']:g}" if n["noise"] == "gaussian" else f"amount={n['amount']:g}"
    lines = [f"{n['noise']} {level}, {result['images']} images of {result['data']}", "",
             "| method | PSNR (dB) | SSIM | seconds |", "|---|---:|---:|---:|"]
    for k, v in result["methods"].items():
        p = "inf" if math.isinf(v["psnr"]) else f"{v['psnr']:.2f}"
        lines.append(f"| {k} | {p} | {v['ssim']:.4f} | {v['seconds']:.1f} |")
    return "\n".join(lines)


def evaluate_restored(cfg: EvaluateConfig, printer: Callable[[str], None] = print) -> dict:
    """PSNR/SSIM of an existing restore or nightly output against clean references."""
    import posixpath

    from raeae.data import read_image
    from raeae.images import decode
    from raeae.contract import read_restored
    from raeae.storage import resolve

    if not cfg.data:
        raise ValueError("--data (the clean references) is required")
    clean = {posixpath.splitext(name)[0]: img for name, img in load_images(cfg.data, None, cfg.storage)}
    table = read_restored(cfg.restored, cfg.storage)
    fs, _ = resolve(cfg.restored, cfg.storage)
    scores: dict[str, list[tuple[float, float]]] = {"noisy input": [], "raeae": []}
    matched = 0
    for path, status, png in zip(table["path"].to_pylist(), table["status"].to_pylist(), table["image"].to_pylist()):
        ref = clean.get(posixpath.splitext(posixpath.basename(path))[0])
        if status != "ok" or ref is None:
            continue
        src_fs, src = resolve(path, cfg.storage)
        noisy, out = read_image(src_fs, src), decode(png)[0]
        if noisy.shape != ref.shape:
            continue
        matched += 1
        scores["noisy input"].append((psnr(ref, noisy), ssim(ref, noisy)))
        scores["raeae"].append((psnr(ref, out), ssim(ref, out)))
        if cfg.baselines:  # the classical methods on the very same stored noisy files
            x = noisy.astype(np.float64) / 255.0
            for method, fn in classical(_sigma(cfg.noise, noisy), 2 if x.ndim == 3 else None).items():
                est = np.clip(fn(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)
                scores.setdefault(method, []).append((psnr(ref, est), ssim(ref, est)))
    if not matched:
        raise ValueError(f"no ok row of {cfg.restored} matches a clean image in {cfg.data} by file name")
    result = {"restored": cfg.restored, "data": cfg.data, "images": matched, "noise": cfg.noise.to_dict(),
              "rows": len(table), "methods": {k: {"psnr": float(np.mean([p for p, _ in v])),
                                                  "ssim": float(np.mean([q for _, q in v])), "seconds": 0.0}
                                              for k, v in scores.items()}}
    printer(markdown_table(result))
    return result
