"""Run `raeae restore` on a 3-node local cluster (ray.cluster_utils.Cluster) and remove a worker node
part-way: as soon as the first Parquet file appears (one file per block here), so the node goes while
most of the work is still queued or running, however fast the machine is. Run as a script by
tests/test_node_loss.py, in its own process, because a process can only be connected to one Ray
cluster and the test session already has its own."""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from raeae.restoring import RestoreConfig, restore
from raeae.settings import Layout


def main(model: str, input_: str, output: str, timeout_s: float, layout: Layout) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed = {}

    def remove_a_worker() -> None:
        t0 = time.time()
        while not list(Path(output).glob("*.parquet")) and time.time() - t0 < timeout_s:
            time.sleep(0.05)
        files = len(list(Path(output).glob("*.parquet")))
        cluster.remove_node(workers[0], allow_graceful=False)
        removed.update(at_s=round(time.time() - t0, 2), files_written_before=files)

    threading.Thread(target=remove_a_worker, daemon=True).start()
    summary = restore(RestoreConfig(model=model, input=input_, output=output, actors=2, cpus_per_actor=0.5,
                                    batch_size=2, file_mb=0.001, layout=layout))
    print("RESULT " + json.dumps({**summary, "removed": removed, "nodes_alive": sum(n["Alive"] for n in ray.nodes())}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), Layout(sys.argv[5]))
