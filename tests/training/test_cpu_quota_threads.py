"""Under a cgroup CPU quota below the CPU affinity, importing the training package sizes
TensorFlow's thread pools to the quota (TensorFlow reads only the affinity); values already in
the environment win. Checked in fresh interpreters inside a real 1-CPU cgroup where this machine
lets a test make one, and on the budget alone everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnserve.bench.cpu_cgroup import quota_cgroup, writable_cpu_hierarchy
from cnnserve.contracts.cpu_limits import CoreBudget, CpuQuota
from cnnserve.contracts.errors import CnnserveError
from cnnserve.training import THREAD_VARIABLES, quota_thread_variables

PROBE = (
    "import os, cnnserve.training\n"
    "print(os.environ.get('TF_NUM_INTRAOP_THREADS'), os.environ.get('TF_NUM_INTEROP_THREADS'))\n"
)


def test_only_a_quota_below_the_affinity_sets_the_thread_variables():
    quota = CpuQuota(2.5, Path("/sys/fs/cgroup"), None)
    assert quota_thread_variables(CoreBudget(16, quota)) == dict.fromkeys(THREAD_VARIABLES, "3")
    assert quota_thread_variables(CoreBudget(2, quota)) == {}  # the quota allows every core
    assert quota_thread_variables(CoreBudget(16, None)) == {}


def _probe(prefix: tuple[str, ...] = (), **overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(overrides)
    done = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_training_process_in_a_one_cpu_cgroup_gets_one_thread_per_pool():
    if writable_cpu_hierarchy() is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a writable cgroup with the cpu controller and at least 2 cores")
    try:
        with quota_cgroup(1.0, "cnnserve-test-train") as cgroup:
            assert _probe(cgroup.enter_prefix()) == "1 1"
            assert _probe(cgroup.enter_prefix(), TF_NUM_INTRAOP_THREADS="2") == "2 1"
    except CnnserveError as error:
        pytest.skip(str(error))
    assert _probe() == "None None"  # outside the cgroup: TensorFlow's own sizes
