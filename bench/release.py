"""Package a trained checkpoint as a bundled model (``raeae/models/NAME.pt``, fp16) with provenance:
the training command, the commit it ran at, the data, minutes and the PSNRs measured here.

    .venv/bin/python bench/release.py --trained runs/release/gray --name gray \\
        --test ../shared/data/bsd68 --command-file runs/release/gray.cmd --commit-file runs/release/gray.commit
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raeae.checkpoint import BUILTIN_DIR
from raeae.release import git_commit, package


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trained", required=True, help="checkpoint written by `raeae train --output`")
    p.add_argument("--name", required=True, help="bundled name: raeae/models/NAME.pt, builtin:NAME")
    p.add_argument("--test", required=True, help="clean test images, e.g. ../shared/data/bsd68")
    p.add_argument("--command-file", required=True, help="file holding the exact training command")
    p.add_argument("--commit-file", default="", help="file holding the commit training ran at (default: HEAD)")
    p.add_argument("--sigmas", default="15,25,50", help="noise levels measured at release")
    p.add_argument("--limit", type=int, default=0, help="first N test images only (0 = all)")
    a = p.parse_args(argv)
    commit = Path(a.commit_file).read_text().strip() if a.commit_file else git_commit()
    provenance = package(a.trained, str(BUILTIN_DIR / f"{a.name}.pt"), Path(a.command_file).read_text().strip(),
                         commit, a.test, [float(s) for s in a.sigmas.split(",")], a.limit)
    print(json.dumps(provenance, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
