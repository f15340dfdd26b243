"""Restore throughput: `raeae restore` against a plain single-process PyTorch loop doing the same work
(read -> decode -> `raeae.restore_image` -> PNG encode -> one Parquet file), on the same files with the
same model, each run in a fresh process of its own as a user runs it, repeats interleaved, medians.

Cases (noisy σ=25 crops of the embedded sample photographs, gray and colour):

* ``small``: 20,000 images of 28×28 to 64×64;
* ``mixed``: 3,000 files, 2,800 of 64×64 and 200 of 180×180;
* ``large``: 96 images of 512×512 to 1024×1024;
* ``startup``: 1, 100 and 10,000 images of 64×64 (fixed costs: start-to-first-row and end to end).

Setups (``--setups``): ``raeae`` is `raeae restore` as shipped; ``staged`` and ``fused`` force that
``--layout``; ``warm`` is `raeae restore` as shipped joining a local Ray head that is already running
(``ray start --head``, started before the timed run and stopped after it, untimed), as a ``ray job
submit`` job or a second command on a running cluster finds Ray: it shows what of the fixed cost is
Ray's start and what is the pipeline's own. For each it also reports each stage's share of the busy
time (decode / model actor / encode, from the per-row timings in the Parquet) and the model's forward
passes' share of the actor's time: the part a GPU would speed up. Peak memory (PSS of every process) comes from one more run per setup, not
from the timed ones: sampling it slows a multi-process run (see :func:`peak_memory`).

    .venv/bin/python bench/restore.py --cases small,mixed,large,startup --repeats 3 [--model builtin:auto]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from _report import print_table, write_json

from raeae.corrupt import NoiseConfig
from raeae.data import SAMPLE_TRAIN, sample_dir
from raeae.evaluate import make_noisy
from raeae.images import decode
from raeae.metrics import PeakMemory

CASES = {
    # name: [(count, smallest side, largest side), ...]
    "small": [(20000, 28, 64)],
    "mixed": [(2800, 64, 64), (200, 180, 180)],
    "large": [(96, 512, 1024)],
}
STARTUP_SIZES = (1, 100, 10000)


def make_collection(folder: str, parts: list[tuple[int, int, int]], seed: int = 0) -> None:
    """Noisy PNG crops of the sample photographs (gray ones stay gray); larger sides are upscaled."""
    rng = np.random.default_rng(seed)
    photos = [decode((sample_dir() / s).read_bytes())[0] for s in SAMPLE_TRAIN]
    os.makedirs(folder, exist_ok=True)
    i = 0
    for count, lo, hi in parts:
        for _ in range(count):
            img = photos[i % len(photos)]
            h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            if h > img.shape[0] or w > img.shape[1]:
                img = np.asarray(Image.fromarray(img).resize((max(w, img.shape[1]), max(h, img.shape[0]))))
            y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
            Image.fromarray(make_noisy(img[y:y + h, x:x + w], NoiseConfig(sigma=25), i)).save(
                f"{folder}/{i:06d}.png", compress_level=1)
            i += 1


def plain_loop(model: str, folder: str, out: str) -> None:
    """The baseline: one process, one image after another through the public API, one Parquet file. Each
    image gets the work a restore row gets: its damage found (impulses filled) and the model for it."""
    import pyarrow as pa

    import raeae
    from raeae import checkpoint as ckpt
    from raeae.damage import prepare
    from raeae.images import bits, channels, decode_image, encode_png
    from raeae.inference import pick_model
    from raeae.contract import SCHEMA
    from raeae.jpeg import stated_scale
    from raeae.storage import list_images

    models = [ckpt.model_from_state(ckpt.parse(b)) for b in ckpt.read_models(model)]
    rows = []
    for f in list_images(folder):
        t0 = time.perf_counter()
        row = {"path": f["path"], "status": "ok", "source_size": f["size"], "model_id": "plain"}
        try:
            with open(f["path"], "rb") as fh:
                data = fh.read()
            image, mode, info = decode_image(data)  # the source's profile, EXIF, DPI as raeae keeps them
            image, damage = prepare(image, stated_jpeg_scale=stated_scale(data))
            model = pick_model(models, image, jpeg=damage.jpeg)
            restored = raeae.restore_image(model, image, jpeg=damage.jpeg)
            row.update(image=encode_png(restored, 1, info), width=restored.shape[1], height=restored.shape[0],
                       channels=channels(restored), bits=bits(restored), source_mode=mode, damage=damage.kind.value)
        except Exception as exc:  # noqa: BLE001
            row.update(status="error", error=str(exc))
        row.update(restored_at=int(time.time() * 1e6), seconds=time.perf_counter() - t0)
        rows.append(row)
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), f"{out}/part-0.parquet")


# The setups: the plain loop, `raeae restore` as shipped, the same with each --layout forced (on CPUs
# the default is fused; "staged" measures what fusing saves), and as shipped on a running Ray ("warm").
SETUPS = ("plain", "raeae", "staged", "fused", "warm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_head():
    """A local Ray head (`ray start --head`, as many CPUs as a private local Ray takes) for the ``warm``
    setup; yields the environment that joins it (its address, and the token a `ray start` head requires).
    Its own temp folder, so the other setups never find it recorded; stopped with its process group:
    SIGTERM, then SIGKILL after 1 s (`ray start --block` itself outlives a SIGTERM: tests/test_jobs.py)."""
    ray_exe = os.path.join(os.path.dirname(sys.executable), "ray")
    port, temp = free_port(), tempfile.mkdtemp(prefix="raeae-bench-head-")
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)}
    proc = subprocess.Popen([ray_exe, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             f"--num-cpus={os.cpu_count()}", f"--temp-dir={temp}", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**env, "RAY_ADDRESS": ""})
    try:
        for line in proc.stdout:  # `ray start` says so once its head answers, then blocks
            if "Ray runtime started" in line:
                break
        else:
            raise RuntimeError("`ray start --head` exited before its head was up")
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def ray_for(setup: str):
    """The environment a run of ``setup`` needs around it: a running head for ``warm`` (yielding the
    environment that joins it), nothing (None: the caller's own) for the others."""
    return running_head() if setup == "warm" else contextlib.nullcontext()


def setup_command(setup: str, model: str, folder: str, out: str) -> list[str]:
    """The command line of one run of ``setup`` (a fresh process of its own, as a user runs it)."""
    if setup == "plain":
        return [sys.executable, __file__, "--plain-child", "--model", model, "--folder", folder, "--out", out]
    cmd = [os.path.join(os.path.dirname(sys.executable), "raeae"), "restore", "--model", model, "--input", folder,
           "--output", out]
    return cmd if setup in ("raeae", "warm") else cmd + ["--layout", setup]


def run_one(setup: str, model: str, folder: str, out: str) -> dict:
    """One timed run in a fresh process: wall time from launch to exit, and to the first row (``warm``:
    on a head started before the clock starts)."""
    shutil.rmtree(out, ignore_errors=True)
    with ray_for(setup) as env:
        start = time.time()
        subprocess.run(setup_command(setup, model, folder, out), check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.time() - start
    t = pq.read_table(out, columns=[c for c in ("restored_at", "width", "height", "decode_s", "restore_s",
                                                "forward_s", "encode_s", "status")
                                    if setup != "plain" or c in ("restored_at", "width", "height", "status")])
    first = min(t["restored_at"].to_pylist()).timestamp() - start
    ok = [s == "ok" for s in t["status"].to_pylist()]
    pixels = sum(w * h for w, h, k in zip(t["width"].to_pylist(), t["height"].to_pylist(), ok) if k)
    r = {"wall_s": wall, "first_row_s": first, "rows": len(t), "megapixels": pixels / 1e6}
    if setup != "plain":
        for c in ("decode_s", "restore_s", "forward_s", "encode_s"):
            r[c] = float(np.nansum(t[c].to_numpy(zero_copy_only=False)))
    return r


def peak_memory(setup: str, model: str, folder: str, out: str) -> dict:
    """One untimed run, for the peak PSS of every process on the machine (Ray's workers too), sampled once
    a second. Never in a timed run: the sampler reads every process's page tables (~70 ms of CPU a sample
    beside a local Ray), and beside it `raeae restore` took 30.1-31.2 s on the mix against 25.3-29.0 s
    without it (3 interleaved pairs), a cost the plain loop's one process does not pay."""
    shutil.rmtree(out, ignore_errors=True)
    with ray_for(setup) as env:
        with PeakMemory(every_s=1.0) as mem:
            subprocess.run(setup_command(setup, model, folder, out), check=True, stdout=subprocess.DEVNULL, env=env)
    return {"peak_pss_gib": mem.peak_pss / 2**30}


def median_run(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="small,mixed,large,startup", help="comma separated: small, mixed, large, "
                                                                        "startup")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per setup; medians reported")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every case's image counts (smoke runs)")
    p.add_argument("--model", default="builtin:auto", help="the model every setup restores with")
    p.add_argument("--setups", default="plain,raeae", help="comma separated, of: " + ", ".join(SETUPS) +
                   " (raeae = `raeae restore` as shipped; staged / fused = with that --layout)")
    p.add_argument("--workdir", default="", help="scratch folder, kept between runs (default: a temporary one)")
    p.add_argument("--json", default="runs/bench-restore.json")
    p.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.plain_child:
        plain_loop(a.model, a.folder, a.out)
        return 0

    work = a.workdir or tempfile.mkdtemp(prefix="raeae-bench-")
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    setups = [x.strip() for x in a.setups.split(",") if x.strip()]
    if setups[0] != "plain" or not set(setups) <= set(SETUPS) or len(setups) < 2:
        p.error(f"--setups must start with plain and name at least one other of {', '.join(SETUPS)}")
    jobs = []  # (label, folder, setups)
    for case in cases:
        if case == "startup":
            for n in sorted({max(1, round(n * a.scale)) for n in STARTUP_SIZES}):
                jobs.append((f"startup {n}", f"{work}/startup-{n}", [(n, 64, 64)]))
        else:
            parts = [(max(1, round(n * a.scale)), lo, hi) for n, lo, hi in CASES[case]]
            jobs.append((case, f"{work}/{case}-{sum(n for n, _, _ in parts)}", parts))
    results = []
    for label, folder, parts in jobs:
        if not os.path.isdir(folder):
            make_collection(folder, parts)
        runs = {setup: [] for setup in setups}
        for rep in range(a.repeats):  # interleaved, so slow drifts of the machine hit every setup alike
            for setup in setups:
                r = run_one(setup, a.model, folder, f"{work}/out-{setup}")
                runs[setup].append(r)
                print(f"{label} #{rep + 1} {setup}: {r['wall_s']:.1f} s (first row {r['first_row_s']:.1f} s)",
                      flush=True)
        medians = {setup: median_run(r) for setup, r in runs.items()}
        for setup in setups:  # memory in a run of its own: its sampler would slow the timed ones
            medians[setup].update(peak_memory(setup, a.model, folder, f"{work}/out-{setup}"))
        results.append({"case": label, "images": runs["plain"][0]["rows"], **medians, "runs": runs})
    print()
    rows = []
    for res in results:
        pl = res["plain"]
        for setup in setups[1:]:
            ra = res[setup]
            busy = ra["decode_s"] + ra["restore_s"] + ra["encode_s"]
            rows.append([res["case"], str(res["images"]), setup, f"{pl['wall_s']:.1f}", f"{ra['wall_s']:.1f}",
                         f"{pl['wall_s'] / ra['wall_s']:.2f}", f"{pl['megapixels'] / pl['wall_s']:.2f}",
                         f"{ra['megapixels'] / ra['wall_s']:.2f}", f"{pl['first_row_s']:.1f}",
                         f"{ra['first_row_s']:.1f}",
                         f"{ra['decode_s'] / busy:.0%} / {ra['restore_s'] / busy:.0%} / {ra['encode_s'] / busy:.0%}",
                         f"{ra['forward_s'] / max(ra['restore_s'], 1e-9):.0%}",
                         f"{pl['peak_pss_gib']:.2f} / {ra['peak_pss_gib']:.2f}"])
    print_table(["case", "images", "setup", "plain loop s", "setup s", "speed-up (plain / setup)", "plain MP/s",
                 "setup MP/s", "plain first row s", "setup first row s", "busy: decode / model actor / encode",
                 "forward share of actor", "peak PSS GiB plain / setup"], rows, right=set(range(3, 13)))
    print(f"\nmedians of {a.repeats} interleaved runs per setup, each a fresh process; model {a.model}; peak PSS "
          f"from one more run per setup, untimed")
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
