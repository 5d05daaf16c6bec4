"""Importing the training package makes TensorFlow's oneDNN kernels the default (they are off by
default on CPUs without AVX512_VNNI/BF16/AMX, where Eigen's trained every zoo model slower), and
TF_ENABLE_ONEDNN_OPTS=0 still turns them off. Checked in fresh interpreters: TensorFlow reads the
variable once, when it loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import cnnserve.training.models\n"  # loads TensorFlow through the package, as `cnnserve train` does
    "from cnnserve.training.quiet_tf import onednn_enabled\n"
    "print(onednn_enabled())\n"
)


def _probe(**overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(overrides)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(("overrides", "expected"), [({}, "True"), ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "False")])
def test_onednn_is_on_unless_the_environment_says_off(overrides, expected):
    assert _probe(**overrides) == expected
