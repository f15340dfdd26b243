"""raeae.worker: a model actor's process keeps freed memory instead of faulting in fresh pages."""

import subprocess
import sys

import pytest

# A fresh process (the allocator setting is process-wide): the bundled gray model's forward pass on
# 4,096 tiles, as a model actor runs it; prints the page faults of 10 passes after 3 warm-up ones.
# The control ("handback") fixes glibc's mmap threshold at its initial 128 KB: a fixed threshold turns
# off glibc's dynamic one, which otherwise rises after a freed mmap and, in some runs, keeps the
# buffers anyway (a CI run saw 2,048 faults by default, fewer than the kept run's 4,061). So the
# control faults in every buffer on every pass, and shows that the count can see it.
FORWARD = """
import resource, sys, torch
from raeae.worker import _M_MMAP_THRESHOLD, keep_freed_memory, mallopt, prepare_worker
if sys.argv[1] == "keep":
    prepare_worker(1)  # what a model actor does
    assert keep_freed_memory()  # glibc here: the setting applies (again: it is idempotent)
else:
    torch.set_num_threads(1)
    assert mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
from raeae import checkpoint as ckpt
model = ckpt.model_from_state(ckpt.parse(ckpt.read_models("builtin:gray")[0]))
x = torch.rand(4096, model.config.features)
with torch.inference_mode():
    for _ in range(3):
        model(x, level=0.1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model(x, level=0.1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FORWARD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_worker_reuses_freed_memory_across_forward_passes():
    kept, handback = _faults("keep"), _faults("handback")
    # 10 passes allocate ~500 MB of activations (~128,000 pages). Kept, a pass reuses the heap: measured
    # 0 to 4,096 faults over the 10 passes (at most one 16 MB buffer faulted in again, whatever else the
    # process did before). The bound allows three such buffers.
    bound = 3 * 4_096
    assert kept <= bound, kept
    # Handed back, every pass faults its buffers in again (238,750 faults measured, about 20x the bound):
    # the same bound fails a process that hands its memory back, which is what this test needs to mean
    # anything.
    assert handback > 10 * bound, (kept, handback)
