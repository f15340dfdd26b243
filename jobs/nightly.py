"""Ray job entrypoint for `raeae nightly`: the same flags as the command.

Submit to a cluster (or a local head) from the repository root::

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"pip": ["-e ."], "env_vars": {"AWS_REGION": "us-east-1"}}' \
        -- python jobs/nightly.py --help

See README.md ("Running on a Ray cluster") for complete commands.
"""

import sys

from raeae.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
