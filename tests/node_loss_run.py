"""Run `raeae restore` on a 3-node local cluster (ray.cluster_utils.Cluster) and remove a worker node
part-way. Run as a script by tests/test_node_loss.py, in its own process, because a process can only
be connected to one Ray cluster and the test session already has its own."""

import json
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from raeae.restore import RestoreConfig, restore


def main(model: str, input_: str, output: str, delay_s: float) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed = {}

    def remove_a_worker() -> None:
        time.sleep(delay_s)
        cluster.remove_node(workers[0], allow_graceful=False)
        removed["at_s"] = delay_s

    threading.Thread(target=remove_a_worker, daemon=True).start()
    summary = restore(RestoreConfig(model=model, input=input_, output=output, actors=2, cpus_per_actor=0.5,
                                    batch_size=2))
    print("RESULT " + json.dumps({**summary, "removed": removed, "nodes_alive": sum(n["Alive"] for n in ray.nodes())}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
