"""Training: the model zoo, data loaders, the training loop and BatchNorm folding.

TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI, AVX512_BF16 or
AMX; on others (AVX2 machines, AMD EPYC VMs among them) it runs Eigen's kernels, which trained
every zoo model 1.2–2.0× slower than oneDNN's on such a machine (BENCHMARKS.md, `cnnserve bench
train --onednn both`). Importing this package makes oneDNN the default before any of its modules
loads TensorFlow; `TF_ENABLE_ONEDNN_OPTS=0` in the environment still turns it off.

TensorFlow sizes its intra- and inter-op thread pools from the CPU affinity and never reads a
cgroup CPU quota (`docker run --cpus`, a pod's CPU limit), so under a quota smaller than the
affinity it would run a thread per host core that the kernel throttles together. Importing this
package then sets `TF_NUM_INTRAOP_THREADS` and `TF_NUM_INTEROP_THREADS` to the quota's cores,
which TensorFlow reads when it starts; values already in the environment win.
"""

import os

from cnnserve.contracts.cpu_limits import CoreBudget, core_budget

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
os.environ.setdefault(ONEDNN_VARIABLE, "1")


def quota_thread_variables(budget: CoreBudget) -> dict[str, str]:
    """TensorFlow's thread-pool sizes for a cgroup quota below the affinity; none otherwise."""
    return {name: str(budget.cores) for name in THREAD_VARIABLES} if budget.quota_limited else {}


for _name, _value in quota_thread_variables(core_budget()).items():
    os.environ.setdefault(_name, _value)
