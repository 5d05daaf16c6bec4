"""Training: the model zoo, data loaders, the training loop and BatchNorm folding.

TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI, AVX512_BF16 or
AMX; on others (AVX2 machines, AMD EPYC VMs among them) it runs Eigen's kernels, which trained
every zoo model 1.2–2.0× slower than oneDNN's on such a machine (BENCHMARKS.md, `cnnserve bench
train --onednn both`). Importing this package makes oneDNN the default before any of its modules
loads TensorFlow; `TF_ENABLE_ONEDNN_OPTS=0` in the environment still turns it off.
"""

import os

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
os.environ.setdefault(ONEDNN_VARIABLE, "1")
