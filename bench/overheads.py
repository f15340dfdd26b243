"""What damage detection and the run report cost, on the 3,000-file mix of ``bench/restore.py`` (2,800 noisy
64×64 crops and 200 of 180×180): one `raeae restore` as shipped (its report included) for the wall time
and the actors' busy seconds from the rows; before it, in this process, the seconds ``raeae.damage.requested``
takes on every decoded file (what each row's model stage spends on it; the median of three rounds), and
after it the seconds writing the report again takes (``raeae.report.restore_report``).

    .venv/bin/python bench/overheads.py --out runs/overheads
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np
from _report import print_table, write_json
from restore import CASES, make_collection

import raeae
from raeae.damage import DamageRequest, requested
from raeae.images import decode
from raeae.jpeg import stated_scale
from raeae.report import restore_report


ROUNDS = 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/overheads")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the mix's counts (smoke runs)")
    a = p.parse_args(argv)
    folder, restored = f"{a.out}/mixed", f"{a.out}/restored"
    if not os.path.isdir(folder):
        make_collection(folder, [(max(1, round(n * a.scale)), lo, hi) for n, lo, hi in CASES["mixed"]])
    # detection first, on a quiet machine (after a restore, Ray's processes still wind down for a while):
    # every decoded file, ROUNDS times, the median round
    files = []
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        files.append((decode(data)[0], stated_scale(data)))
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for image, scale in files:
            requested(image, DamageRequest(), scale)
        rounds.append(time.perf_counter() - t0)
    detect_s = float(np.median(rounds))
    shutil.rmtree(restored, ignore_errors=True)
    summary = raeae.restore(input=folder, output=restored)
    wall, busy = summary["wall_s"], summary["stage_seconds"]
    t0 = time.perf_counter()
    restore_report(restored)
    report_s = time.perf_counter() - t0
    actor_s = busy["restore_s"] + busy["decode_s"] + busy["encode_s"]
    rows = [["damage detection, all files (one core)", f"{detect_s:.2f}", f"{100 * detect_s / actor_s:.1f} % of the "
             f"stages' busy {actor_s:.1f} s", f"{1000 * detect_s / len(files):.2f} ms a file"],
            ["report written again", f"{report_s:.2f}", f"{100 * report_s / wall:.1f} % of the run's wall {wall:.1f} s", ""]]
    print_table(["what", "seconds", "share", "per file"], rows)
    write_json(f"{a.out}/overheads.json", {"files": len(files), "wall_s": wall, "stage_seconds": busy,
                                           "detect_s": detect_s, "detect_rounds_s": rounds, "report_s": report_s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
