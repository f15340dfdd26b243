"""Ray job entrypoint for `raeae archive`: learn from a noisy archive itself (no clean images), then
restore all of it into a nightly-style output; the same flags as the command.

    ray job submit --working-dir . --runtime-env-json '{"excludes": [".venv", ".git", "runs"]}' -- \
        python jobs/archive.py --archive s3://bucket/scans/ --output s3://bucket/restored/ --gpu

See README.md ("Archives with no clean images") for the measured recipe.
"""

import sys

from raeae.cli import console

if __name__ == "__main__":
    sys.exit(console(["archive", *sys.argv[1:]]))
