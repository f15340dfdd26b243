"""Ray job entrypoint for `raeae nightly`: the same flags as the command.

Submit to a cluster (or a local head) from the repository root::

    RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . \
        --runtime-env-json '{"excludes": [".venv", ".git", "runs"]}' \
        -- python jobs/nightly.py --help

See README.md ("Running on a Ray cluster") for complete commands.
"""

import sys

from raeae.cli import console

if __name__ == "__main__":
    sys.exit(console(["nightly", *sys.argv[1:]]))
