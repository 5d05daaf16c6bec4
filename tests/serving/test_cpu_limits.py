"""contracts/cpu_limits.py: the cores a process may use, from its affinity and its cgroup's CPU quota.

The unit tests lay out /proc/self/cgroup, /proc/self/mountinfo and the cgroup files exactly as
the kernel writes them, for cgroup v2, v1 and the hybrid of both; the last test puts a real
`cnnserve serve` into a real cgroup with a quota where this machine lets it make one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess
from onnx_models import images

from cnnserve.bench.cpu_cgroup import QuotaCgroup, quota_cgroup, writable_cpu_hierarchy
from cnnserve.contracts.cpu_limits import (
    CoreBudget,
    CpuQuota,
    available_cores,
    cgroup_mounts,
    core_budget,
    cpu_quota,
)
from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving.config import ServerOptions

AFFINITY = len(os.sched_getaffinity(0))


def _mountinfo(*mounts: tuple[str, Path, str, str]) -> str:
    """Lines as the kernel writes them: (root, mount point, fstype, super options)."""
    lines = ["22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"]
    for n, (root, point, fstype, options) in enumerate(mounts, 30):
        escaped = str(point).replace(" ", "\\040")
        fields = f"{n} 25 0:{n} {root} {escaped} rw,nosuid,nodev,noexec,relatime shared:{n}"
        lines.append(f"{fields} - {fstype} cgroup {options}")
    return "\n".join(lines) + "\n"


def _proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def _write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)


def test_a_container_with_its_own_cgroup_namespace_reads_cpu_max_at_the_mount_point(tmp_path: Path):
    mount = tmp_path / "sys fs cgroup"  # escaped as \040 in mountinfo
    _write(mount, cpu__max="150000 100000\n", cpu__stat="usage_usec 2500000\nuser_usec 2000000\n")
    proc = _proc(tmp_path, "0::/\n", _mountinfo(("/", mount, "cgroup2", "rw,nsdelegate")))
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 1.5 and quota.directory == mount
    assert quota.usage_ns() == 2_500_000_000
    assert CoreBudget(8, quota).cores == 2 and CoreBudget(1, quota).cores == 1


def test_the_tightest_limit_on_the_way_up_binds_a_nested_cgroup(tmp_path: Path):
    """A Kubernetes container's own cgroup says "max"; its pod's limit is what binds it."""
    mount = tmp_path / "cgroup"
    _write(mount / "kubepods", cpu__max="400000 100000\n")
    _write(mount / "kubepods/pod1", cpu__max="50000 100000\n", cpu__stat="usage_usec 7\n")
    _write(mount / "kubepods/pod1/c1", cpu__max="max 100000\n")
    proc = _proc(tmp_path, "0::/kubepods/pod1/c1\n", _mountinfo(("/", mount, "cgroup2", "rw")))
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 0.5 and quota.directory == mount / "kubepods/pod1"
    assert quota.usage_ns() == 7000
    budget = CoreBudget(4, quota)
    assert budget.cores == 1 and budget.quota_limited
    pod = mount / "kubepods/pod1"
    assert budget.describe() == f"1 core(s): cgroup CPU quota 0.5 ({pod}), 4 by CPU affinity"


def test_cgroup_v1_with_cpu_and_cpuacct_in_one_hierarchy_as_docker_mounts_it(tmp_path: Path):
    """Without a cgroup namespace the mount's root is the container's own cgroup."""
    mount = tmp_path / "cpu,cpuacct"
    _write(mount, cpu__cfs_quota_us="200000\n", cpu__cfs_period_us="100000\n", cpuacct__usage="123456789\n")
    cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    proc = _proc(tmp_path, cgroup, _mountinfo(("/docker/abc", mount, "cgroup", "rw,cpu,cpuacct")))
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 2.0 and quota.usage_ns() == 123456789
    assert CoreBudget(2, quota).quota_limited is False  # two cores by affinity and by quota
    assert CoreBudget(16, quota).cores == 2


def test_hybrid_hierarchies_fall_back_to_v1_when_v2_has_no_cpu_controller(tmp_path: Path):
    """This layout (cpu and cpuacct mounted apart, an unused unified tree) is a common host's."""
    cpu, cpuacct, unified = tmp_path / "cpu", tmp_path / "cpuacct", tmp_path / "unified"
    _write(unified / "grp")  # cgroup2 without the cpu controller: no cpu.max anywhere
    _write(cpu, cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    _write(cpu / "grp", cpu__cfs_quota_us="100000\n", cpu__cfs_period_us="100000\n")
    _write(cpuacct / "grp", cpuacct__usage="42\n")
    cgroup = "2:cpuacct:/grp\n1:cpu:/grp\n0::/grp\n"
    info = _mountinfo(
        ("/", cpu, "cgroup", "rw,cpu"),
        ("/", cpuacct, "cgroup", "rw,cpuacct"),
        ("/", unified, "cgroup2", "rw"),
    )
    quota = cpu_quota(_proc(tmp_path, cgroup, info))
    assert quota is not None and quota.cores == 1.0 and quota.directory == cpu / "grp"
    assert quota.usage_file == cpuacct / "grp/cpuacct.usage" and quota.usage_ns() == 42


@pytest.mark.parametrize(
    ("cgroup", "fstype", "options", "files"),
    [
        ("0::/\n", "cgroup2", "rw", {"cpu__max": "max 100000\n"}),
        ("1:cpu:/\n", "cgroup", "rw,cpu", {"cpu__cfs_quota_us": "-1\n", "cpu__cfs_period_us": "100000\n"}),
        ("0::/\n", "cgroup2", "rw", {"cpu__max": "not numbers\n"}),
        ("0::/\n", "cgroup2", "rw", {}),
        ("0::/\n", "cgroup2", "rw", {"cpu__max": "100000 0\n"}),
        ("1:memory:/\n", "cgroup", "rw,cpu", {"cpu__cfs_quota_us": "1\n", "cpu__cfs_period_us": "1\n"}),
    ],
    ids=["v2-max", "v1-unlimited", "garbage", "no-file", "zero-period", "not-in-a-cpu-cgroup"],
)
def test_no_quota_means_the_affinity_alone(
    tmp_path: Path, cgroup: str, fstype: str, options: str, files: dict[str, str]
) -> None:
    mount = tmp_path / "cg"
    _write(mount, **files)
    proc = _proc(tmp_path, cgroup, _mountinfo(("/", mount, fstype, options)))
    assert cpu_quota(proc) is None
    assert core_budget(proc) == CoreBudget(AFFINITY, None)
    assert available_cores(proc) == AFFINITY and not core_budget(proc).quota_limited
    assert core_budget(proc).describe() == f"{AFFINITY} core(s) by CPU affinity"


def test_a_cgroup_path_outside_the_mount_or_missing_reads_only_the_mount_point(tmp_path: Path):
    mount = tmp_path / "cg"
    _write(mount, cpu__max="100000 100000\n")
    for path in ("/elsewhere/x", "/gone"):  # not under the mount's root; under it but no directory
        root = "/inside" if path.startswith("/elsewhere") else "/"
        proc = _proc(tmp_path, f"0::{path}\n", _mountinfo((root, mount, "cgroup2", "rw")))
        quota = cpu_quota(proc)
        assert quota is not None and quota.directory == mount and quota.cores == 1.0


def test_unreadable_proc_files_and_stray_lines_are_no_limit(tmp_path: Path):
    assert cpu_quota(tmp_path / "no-proc") is None
    assert cgroup_mounts("garbage\n1 2 3\n40 1 0:1 / /x rw - tmpfs tmpfs rw\n") == []
    quota = CpuQuota(1.0, tmp_path, tmp_path / "cpu.stat")
    assert quota.usage_ns() is None  # no file
    (tmp_path / "cpu.stat").write_text("user_usec 5\n")
    assert quota.usage_ns() is None  # no usage line


def test_threads_follow_a_quota_that_onnx_runtime_cannot_see():
    options = ServerOptions(repository=Path("."))
    limited = CoreBudget(16, CpuQuota(2.0, Path("/cg"), None))
    assert options.threads_per_instance(1, CoreBudget(16, None)) == 0  # ONNX Runtime's own choice
    assert options.threads_per_instance(1, limited) == 2
    assert options.threads_per_instance(2, limited) == 1
    assert options.threads_per_instance(3, CoreBudget(16, None)) == 5
    assert ServerOptions(repository=Path("."), cpu_threads=3).threads_per_instance(1, limited) == 3
    worker = ServerOptions(repository=Path("."), core_share=4)  # a worker's part of the machine
    assert worker.threads_per_instance(1, limited) == 4 and worker.threads_per_instance(2, limited) == 2


@pytest.fixture
def one_cpu_cgroup() -> Iterator[QuotaCgroup]:
    """A real child cgroup limited to one CPU per period; removed afterwards."""
    if writable_cpu_hierarchy() is None or AFFINITY < 2:
        pytest.skip("needs a writable cgroup with the cpu controller and at least 2 cores")
    with contextlib.ExitStack() as stack:
        try:
            cgroup = stack.enter_context(quota_cgroup(1.0, "cnnserve-test"))
        except CnnserveError as error:  # made, but no process may enter it here
            pytest.skip(str(error))
        yield cgroup


def test_a_server_in_a_one_cpu_cgroup_sizes_its_sessions_to_the_quota(
    one_cpu_cgroup: QuotaCgroup, repository: Path, tmp_path: Path
) -> None:
    """Without `--cpu-threads` the server would leave the pool to ONNX Runtime's core count."""
    flags = ("--models", "cnn", "--cpu-threads", "0")
    server = ServerProcess(repository, tmp_path / "limited", *flags, prefix=one_cpu_cgroup.enter_prefix())
    try:
        server.start()
        response = server.client().classify("cnn", images(3), top_k=1)
        assert len(response.classifications) == 3 and response.model_version == "2"
        quota = f"1 core(s): cgroup CPU quota 1 ({one_cpu_cgroup.directory}), {AFFINITY} by CPU affinity"
        assert quota in server.log()
        assert "(1 instance, 1 intra-op thread(s)" in server.log()
        assert server.stop() == 0
    finally:
        server.kill()
    free = ServerProcess(repository, tmp_path / "free", "--models", "cnn", "--cpu-threads", "0").start()
    try:
        assert f"{AFFINITY} core(s) by CPU affinity" in free.log()
        assert "(1 instance, ONNX Runtime's intra-op threads" in free.log()
    finally:
        free.kill()
