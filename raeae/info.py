"""``raeae info``: what a checkpoint says about itself, read from the file alone: its network, the
corruption it learned to undo, how long and on what it trained, its best validation score, the tile
stride a restore uses, and for a bundled model its release record (the command, the commit and the
PSNRs measured on a benchmark). A checkpoint carries all of it (``raeae.checkpoint``), so a model
found in a bucket months later still says what it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from raeae import checkpoint as ckpt
from raeae.jpeg import PHASE_STEP
from raeae.storage import StorageConfig


@dataclass(frozen=True)
class InfoConfig:
    """Describe a model: its network, its training and what it measured, from the checkpoint alone."""

    model: str = field(default=ckpt.AUTO, metadata={
        "help": "checkpoint folder or file (local, s3://, gs://) or builtin:NAME; builtin:auto describes "
                "every bundled model (what `raeae restore` uses by default)"})
    json: bool = field(default=False, metadata={
        "help": "print everything each checkpoint holds but its weights, as a JSON list (one object per model)"})
    storage: StorageConfig = StorageConfig()


def describe(uri: str, storage: StorageConfig = StorageConfig()) -> list[dict]:
    """One description per model at ``uri`` (two for ``builtin:auto``): its name, model id, size in
    bytes, network (with its parameter count), restore stride, and ``header``: the checkpoint without
    its weights (model and training configs, noise, metrics, history, provenance)."""
    from raeae.model import ModelConfig, describe_network

    names = [ckpt.BUILTIN + n for n in ckpt.auto_names()] if uri == ckpt.AUTO else [uri]
    out = []
    for name, data in zip(names, ckpt.read_models(uri, storage)):
        state = ckpt.read_header(data, name)
        out.append({"model": name, "model_id": ckpt.model_id(data), "bytes": len(data),
                    "network": describe_network(ModelConfig.from_dict(state["model_config"])),
                    "stride": ckpt.recommended_stride(state),
                    "header": {k: v for k, v in state.items() if k != "model"}})
    return out


def noise_text(noise: dict) -> str:
    """The corruption a model was trained on, in words: ``gaussian σ 0-55 (blind)``."""
    kind = noise.get("noise", "gaussian")
    if kind == "gaussian":
        lo, hi = float(noise.get("sigma", 0.0)), float(noise.get("sigma_max", 0.0))
        return f"gaussian σ {lo:g}-{hi:g} (blind)" if hi > lo else f"gaussian σ {lo:g}"
    if kind == "jpeg":
        lo, hi = float(noise.get("sigma", 0.0)), float(noise.get("sigma_max", 0.0))
        qualities, share = f"JPEG quality {int(noise.get('quality', 10))}-{int(noise.get('quality_max', 95))}", \
            float(noise.get("noise_share", 0.5))
        return (f"{qualities}, after gaussian σ {lo:g}-{max(lo, hi):g} on {share:.0%} of the images" if share > 0
                else f"{qualities}, no noise before it")
    if kind == "poisson":
        lo, hi = float(noise.get("peak", 30.0)), float(noise.get("peak_max", 0.0))
        return f"poisson shot noise, peak {lo:g}" + (f"-{hi:g}" if hi > lo else "")
    if kind == "block":
        return f"block masks of {int(noise.get('block', 0))}x{int(noise.get('block', 0))} pixels"
    return f"{kind}, {float(noise.get('amount', 0.0)):.0%} of the pixels"


def learned_text(header: dict) -> str:
    """What the model learned to undo, and from what."""
    train, metrics = header.get("train_config", {}), header.get("metrics", {})
    if not train.get("self_supervised"):
        return f"to undo {noise_text(header.get('noise', {}))}, from clean images"
    scheme = (f"recorrupt, noise σ {metrics['noise_sigma']:.1f} estimated" if metrics.get("recorrupt")
              else "blind-spot masking" if "recorrupt" in metrics else train.get("scheme", "?"))
    return f"from noisy images alone (self-supervised: {scheme})"


def lineage(provenance: dict) -> list[dict]:
    """A bundled model's release records, newest first: each release starts from the one it names as
    ``init`` and keeps that one's record as ``init_provenance``."""
    chain = []
    while isinstance(provenance, dict) and provenance:
        chain.append(provenance)
        provenance = provenance.get("init_provenance")
    return chain


def training_text(header: dict, name: str = "") -> str:
    """How long and on what the model trained, as far as its checkpoint says (``name``: the model's
    own, so a release fine-tuned from the one before it under the same name says so)."""
    train, history = header.get("train_config", {}), header.get("history", [])
    chain = lineage(header.get("provenance", {}))
    last = chain[0] if chain else {}
    epochs = last.get("epochs") or (history[-1]["epoch"] if history else header.get("metrics", {}).get("epoch"))
    minutes = last.get("train_minutes") or sum(h.get("epoch_s", 0.0) for h in history) / 60
    text = f"{epochs or '?'} epoch(s)" + (f" in {minutes:.1f} min" if minutes else "")
    text += f" on {last.get('train_data') or train.get('data') or 'unrecorded data'}"
    init = last.get("init") or train.get("init")
    text += (", from scratch" if not init else f", starting from its previous release ({init})" if init == name
             else f", starting from {init}")
    if len(chain) > 1:
        total = sum(float(p.get("train_minutes") or 0.0) for p in chain)
        text += f"; the last of {len(chain)} training steps, {total:.0f} min in all"
    return text


def validation_text(metrics: dict) -> str:
    """The checkpoint's best epoch as its training validated it."""
    if "val_psnr" in metrics:
        return (f"PSNR {metrics['val_psnr']:.2f} dB (noisy {metrics.get('val_psnr_noisy', float('nan')):.2f}) "
                f"at epoch {metrics.get('epoch', '?')}")
    if "val_ss_loss" in metrics:
        return f"self-supervised loss {metrics['val_ss_loss']:.5f} at epoch {metrics.get('epoch', '?')}"
    return "none recorded"


def _tiles(model_config: dict) -> str:
    """``13x13 tiles``, and what a model with a margin sees of each: ``13x13 tiles, each seen in 21x21``."""
    p, m = model_config["patch_size"], model_config.get("margin", 0)
    return f"{p}x{p} tiles" + (f", each seen in {p + 2 * m}x{p + 2 * m}" if m else "")


def info_lines(d: dict) -> list[str]:
    """The human-readable description of one model (:func:`describe`)."""
    h = d["header"]
    told = "; told each image's noise level (estimated at restore)" if h["model_config"].get("noise_input") else ""
    lines = [f"{d['model']}: model id {d['model_id']}, {d['bytes'] / 1e6:.1f} MB",
             f"  network     {d['network']}{told}",
             f"  learned     {learned_text(h)}",
             f"  trained     {training_text(h, d['model'])}",
             f"  validation  {validation_text(h.get('metrics', {}))}",
             f"  restores    in {_tiles(h['model_config'])} at stride {d['stride']}"
             + (f", JPEG-damaged images at stride {PHASE_STEP} on their block grid"
                if h["model_config"].get("jpeg_input") else "")]
    prov = h.get("provenance", {})
    if prov.get("psnr_db"):
        # keys are a σ ("25") for the noise models, "jpeg Q" for the JPEG ones
        scores = ", ".join(f"{s if s.startswith('jpeg') else 'σ=' + s} {v['noisy']:.2f} -> {v['model']:.2f} dB"
                           for s, v in prov["psnr_db"].items())
        lines.append(f"  measured    {prov.get('test_data', '?')} ({prov.get('test_images', '?')} images): {scores}")
    if prov.get("command"):
        lines.append(f"  made by     {prov['command']}  (commit {str(prov.get('commit', '?'))[:12]})")
    return lines


def _plain(value):
    """JSON-safe: the header's tensor placeholders (buffers kept beside the weights) as their type name."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def info(cfg: InfoConfig) -> list[dict]:
    """Print the description of the model(s) at ``cfg.model`` (JSON with ``cfg.json``); returns them."""
    models = describe(cfg.model, cfg.storage)
    if cfg.json:
        print(json.dumps(_plain(models), indent=2))
    else:
        print("\n".join("\n".join(info_lines(d)) for d in models))
    return models
