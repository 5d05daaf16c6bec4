"""Import TensorFlow without its C++ start-up banner.

TensorFlow 2.21 writes oneDNN and CPU-feature notices to file descriptor 2 before its logging is
initialised, so TF_CPP_MIN_LOG_LEVEL cannot silence them. Python-level errors still propagate.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules or os.environ.get("CNNSERVE_TF_LOGS"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.constant(0)  # the second banner is printed when the first op runs
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def onednn_enabled() -> bool | None:
    """Whether the loaded TensorFlow runs oneDNN's kernels (its own answer; None if it cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())
