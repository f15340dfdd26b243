"""Restoration quality on the standard benchmarks, next to the noisy input, scikit-image's TV /
wavelet / NL-means on the very same noisy images, and the published numbers:

* gray: BSD68 at each σ, for the bundled ``builtin:gray`` (blind) and, with ``--minutes``, a fresh
  σ-specific model trained by exactly the command a user types
  (``raeae train --data TRAIN --output M --sigma S --max-minutes N``: the shipped defaults);
* colour (``--test-color``): CBSD68 at each σ, for ``builtin:color`` and ``builtin:gray`` applied
  channel by channel;
* self-supervised (``--self-supervised-minutes``): a noisy copy of the training set (σ=25, seed 0) is
  the archive; ``raeae archive`` learns from its noisy images alone and restores it; scored on that
  archive against its clean originals (next to TV / NL-means on the same noisy files) and, with the
  same model, on the gray test set at σ=25 (Noise2Void's published BSD68 number: 27.71 dB). With
  ``--train-color`` the same for colour: a noisy copy of the first ``--color-archive-images`` colour
  training images is the archive (``raeae archive`` picks a colour model by itself), scored on it and
  on ``--test-color``.

    .venv/bin/python bench/quality.py --train ../shared/data/train400 --test ../shared/data/bsd68 \\
        --test-color ../shared/data/cbsd68 --sigmas 15,25,50 --minutes 10

Noisy images are clipped to [0, 255] and quantised to 8 bits (what an archive holds), so the noisy
PSNR is a little higher than the unclipped float noise of the published protocol. The other damage
archives hold (impulses, JPEG, noise then JPEG, shot noise), restored with no flags in one folder the
way `raeae restore` meets them: ``bench/damage.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _report import print_table, write_json

from raeae.checkpoint import BUILTIN, builtin_names
from raeae.cli import main as raeae_main
from raeae.corrupt import NoiseConfig
from raeae.evaluate import EvaluateConfig, evaluate

# Zhang et al., "Beyond a Gaussian Denoiser" (DnCNN), IEEE TIP 2017, Tables II and V (PSNR, dB).
PUBLISHED_GRAY = {15: {"BM3D": 31.07, "MLP": None, "DnCNN": 31.73},
                  25: {"BM3D": 28.57, "MLP": 28.96, "DnCNN": 29.23},
                  50: {"BM3D": 25.62, "MLP": 26.03, "DnCNN": 26.23}}
PUBLISHED_COLOR = {15: {"CBM3D": 33.52, "MLP": None, "CDnCNN": 33.89},
                   25: {"CBM3D": 30.71, "MLP": None, "CDnCNN": 31.23},
                   50: {"CBM3D": 27.38, "MLP": None, "CDnCNN": 27.92}}


# The blind range of the bundled models (and of the --blind comparison): σ 0-55 on the 0-255 scale.
BLIND_SIGMA_MAX = 55.0


def fresh_model(train: str, sigma: float, minutes: float, out: str, workers: int, sigma_max: float = 0.0) -> str:
    """A model trained through the CLI, with nothing but the flags a user would give: σ-specific, or
    blind over [sigma, sigma_max] when ``sigma_max`` is set."""
    t0 = time.perf_counter()
    model_dir = f"{out}/fresh-s{sigma:g}" + (f"-{sigma_max:g}" if sigma_max else "")
    blind = ["--sigma-max", f"{sigma_max:g}"] if sigma_max else []
    rc = raeae_main(["train", "--data", train, "--output", model_dir, "--noise", "gaussian", "--sigma", f"{sigma:g}",
                     *blind, "--max-minutes", f"{minutes:g}", "--workers", str(workers),
                     "--storage-path", f"{out}/ray"])
    if rc != 0:
        raise SystemExit(f"training the fresh model {model_dir} failed (exit {rc})")
    kind = f"blind σ {sigma:g}-{sigma_max:g}" if sigma_max else f"σ={sigma:g}"
    print(f"fresh {kind} model: {(time.perf_counter() - t0) / 60:.1f} min including Ray start-up")
    return model_dir


def self_supervised(train: str, test: str, minutes: float, limit: int, out: str, archive_images: int = 0,
                    channels: int = 1) -> dict:
    """The archive workflow on a noisy copy of ``train`` (its first ``archive_images``, 0 = all): learn
    from it, restore it, score both ways."""
    from PIL import Image

    from raeae.data import load_images
    from raeae.evaluate import make_noisy

    archive, restored = f"{out}/noisy-archive", f"{out}/archive-restored"
    if not os.path.isdir(archive):
        os.makedirs(archive)
        for i, (name, clean) in enumerate(load_images(train, limit=archive_images)):
            Image.fromarray(make_noisy(clean, NoiseConfig(sigma=25), i)).save(
                f"{archive}/{os.path.splitext(name)[0]}.png")
    rc = raeae_main(["archive", "--archive", archive, "--output", restored, "--max-minutes", f"{minutes:g}",
                     "--channels", str(channels), "--run-id", f"bench{time.time_ns()}"])
    if rc != 0:
        raise SystemExit(f"raeae archive failed (exit {rc})")
    on_archive = evaluate(EvaluateConfig(restored=restored, data=train, noise=NoiseConfig(sigma=25),
                                         output=f"{out}/archive-eval"), printer=lambda s: None)
    model = sorted(p for p in os.listdir(f"{restored}/_models") if p != "ray")[-1]
    on_test = score({"self-supervised": f"{restored}/_models/{model}"}, test, 25.0, limit, f"{out}/ss")
    return {"archive": on_archive, "test": on_test, "minutes": minutes}


def score(models: dict[str, str], test: str, sigma: float, limit: int, out: str) -> dict:
    """PSNR/SSIM of each model, plus (with the first) the noisy input and the classical methods."""
    methods: dict[str, dict] = {}
    images = 0
    for i, (label, model) in enumerate(models.items()):
        ev = evaluate(EvaluateConfig(model=model, data=test, noise=NoiseConfig(sigma=sigma), seed=0, limit=limit,
                                     baselines=i == 0, output=f"{out}/{label.replace(' ', '_')}-s{sigma:g}"),
                      printer=lambda s: None)
        images = ev["images"]
        for name, m in ev["methods"].items():
            methods[label if name == "raeae" else name] = m
    return {"images": images, "methods": methods}


def table(title: str, rows: list[dict], published: dict) -> None:
    names = list(rows[0]["methods"])
    print(f"\n{title}\n")
    out = []
    for r in rows:
        cells = [f"{r['methods'][n]['psnr']:.2f} / {r['methods'][n]['ssim']:.3f}" for n in names]
        pub = published.get(int(r["sigma"]), {})
        out.append([f"{r['sigma']:g}", *cells, " / ".join("-" if v is None else f"{v:.2f}" for v in pub.values())])
    pub_names = " / ".join(next(iter(published.values())))
    print_table(["σ", *names, f"published {pub_names}"], out)


def ss_table(title: str, ss: dict, test: str, published: float, published_name: str) -> None:
    print(f"\n{title}:\n")
    rows = [["the noisy archive itself", f"{ss['archive']['images']}"] +
            [f"{ss['archive']['methods'][k]['psnr']:.2f}" for k in ("noisy input", "raeae", "TV (Chambolle)",
                                                                    "NL-means")] + ["-"],
            [test, f"{ss['test']['images']}"] +
            [f"{ss['test']['methods'][k]['psnr']:.2f}" for k in ("noisy input", "self-supervised",
                                                                 "TV (Chambolle)", "NL-means")] + [f"{published:.2f}"]]
    print_table(["scored on", "images", "noisy", "raeae self-supervised", "TV", "NL-means", published_name], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", required=True, help="clean gray test images, e.g. ../shared/data/bsd68")
    p.add_argument("--test-color", default="", help="clean colour test images, e.g. ../shared/data/cbsd68")
    p.add_argument("--train", default="", help="clean training images for the fresh model, e.g. "
                                               "../shared/data/train400 (needed with --minutes)")
    p.add_argument("--minutes", type=float, default=0.0, help="train a fresh σ-specific model per σ for this "
                                                              "long with the shipped defaults (0 = none)")
    p.add_argument("--blind", action="store_true",
                   help="with --minutes, also train one blind model (σ 0-55) for the same minutes and score it at "
                        "every σ beside the σ-specific ones: the equal-budget comparison")
    p.add_argument("--sigmas", default="15,25,50", help="noise levels (0-255), comma separated")
    p.add_argument("--self-supervised-minutes", type=float, default=0.0,
                   help="learn from a noisy copy of --train alone for this long (raeae archive) and score "
                        "it (0 = skip)")
    p.add_argument("--train-color", default="", help="clean colour images whose noisy copy is a colour archive "
                                                     "for the self-supervised row, e.g. ../shared/data/cbsd432")
    p.add_argument("--color-archive-images", type=int, default=100,
                   help="the colour archive: this many of --train-color's images (100 of 481x321 hold about "
                        "as many pixels as Train400)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers for the fresh model")
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images (0 = all)")
    p.add_argument("--out", default="runs/quality", help="models, evaluate.json and grids go here")
    a = p.parse_args(argv)
    if (a.minutes > 0 or (a.self_supervised_minutes > 0 and not a.train_color)) and not a.train:
        p.error("--minutes and --self-supervised-minutes need --train (or --train-color)")
    if a.blind and a.minutes <= 0:
        p.error("--blind needs --minutes")
    if a.train_color and not a.test_color:
        p.error("--train-color needs --test-color")
    bundled = set(builtin_names())
    sigmas = [float(s) for s in a.sigmas.split(",") if s.strip()]  # "" = the self-supervised rows only
    gray_rows, color_rows = [], []
    blind = ""
    if a.blind:
        blind = fresh_model(a.train, 0.0, a.minutes, a.out, a.workers, sigma_max=BLIND_SIGMA_MAX)
    for sigma in sigmas:
        models = {"builtin:gray": BUILTIN + "gray"} if BUILTIN + "gray" in bundled else {}
        if blind:
            models[f"fresh blind {a.minutes:g} min"] = blind
        if a.minutes > 0:
            models[f"fresh {a.minutes:g} min"] = fresh_model(a.train, sigma, a.minutes, a.out, a.workers)
        if models:
            gray_rows.append({"sigma": sigma, **score(models, a.test, sigma, a.limit, f"{a.out}/gray")})
        if a.test_color and BUILTIN + "gray" in bundled:
            color = {"builtin:color": BUILTIN + "color"} if BUILTIN + "color" in bundled else {}
            color["builtin:gray per channel"] = BUILTIN + "gray"
            color_rows.append({"sigma": sigma, **score(color, a.test_color, sigma, a.limit, f"{a.out}/color")})
    cpus = os.cpu_count() or 1
    if gray_rows:
        table(f"{a.test} ({gray_rows[0]['images']} images), PSNR dB / SSIM ({cpus} CPUs)", gray_rows, PUBLISHED_GRAY)
    if color_rows:
        table(f"{a.test_color} ({color_rows[0]['images']} images), PSNR dB / SSIM", color_rows, PUBLISHED_COLOR)
    ss = ss_color = None
    if a.self_supervised_minutes > 0 and a.train:
        ss = self_supervised(a.train, a.test, a.self_supervised_minutes, a.limit, f"{a.out}/self-supervised")
        ss_table(f"Self-supervised, {a.self_supervised_minutes:g} min on the noisy archive only (σ=25)",
                 ss, a.test, 27.71, "Noise2Void (published, BSD68)")
    if a.self_supervised_minutes > 0 and a.train_color:
        ss_color = self_supervised(a.train_color, a.test_color, a.self_supervised_minutes, a.limit,
                                   f"{a.out}/self-supervised-color", a.color_archive_images, channels=3)
        ss_table(f"Self-supervised colour, {a.self_supervised_minutes:g} min on the noisy colour archive only "
                 f"(σ=25)", ss_color, a.test_color, PUBLISHED_COLOR[25]["CBM3D"], "CBM3D (published)")
    write_json(f"{a.out}/quality.json", {"gray": gray_rows, "color": color_rows, "minutes": a.minutes,
                                         "self_supervised": ss, "self_supervised_color": ss_color})
    return 0


if __name__ == "__main__":
    sys.exit(main())
