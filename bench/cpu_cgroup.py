"""A child cgroup with a CPU quota, to run a server as a container with `--cpus N` runs it.

Needs a cgroup hierarchy with the cpu controller that this process may write: cgroup v1's cpu
mount, or v2 with `cpu` in the root's `cgroup.subtree_control` (usually root only). A process
enters it by writing its pid to `cgroup.procs` before it starts the server, so every thread the
server makes is inside from the start (`enter_prefix`).

As a command, it runs one program in a new cgroup with a quota, as `docker run --cpus N` would:

    .venv/bin/python -m cnnserve.bench.cpu_cgroup --cpus 1 -- .venv/bin/cnnserve bench train --model mnist_cnn
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cnnserve.contracts.cpu_limits import PROC_SELF, cgroup_mounts
from cnnserve.contracts.errors import CnnserveError

PERIOD_US = 100_000  # the kernel's default CFS period


def writable_cpu_hierarchy(proc_self: Path = PROC_SELF) -> tuple[Path, str] | None:
    """A cgroup directory with the cpu controller where this process may make children: (it, "v1"|"v2")."""
    try:
        mounts = cgroup_mounts((proc_self / "mountinfo").read_text())
    except OSError:
        return None
    for mount in mounts:
        if mount.fstype == "cgroup" and "cpu" in mount.options and os.access(mount.point, os.W_OK):
            return mount.point, "v1"
    for mount in mounts:
        controls = mount.point / "cgroup.subtree_control"
        writable = mount.fstype == "cgroup2" and os.access(mount.point, os.W_OK) and controls.exists()
        if writable and "cpu" in controls.read_text().split():
            return mount.point, "v2"
    return None


@dataclass(frozen=True)
class QuotaCgroup:
    directory: Path
    cores: float

    def enter_prefix(self) -> tuple[str, ...]:
        """A command prefix: the shell moves itself into the cgroup, then execs the command."""
        return ("sh", "-c", f'echo $$ > "{self.directory / "cgroup.procs"}" && exec "$@"', "sh")


@contextmanager
def quota_cgroup(cores: float, name: str = "cnnserve") -> Iterator[QuotaCgroup]:
    """A new cgroup limited to `cores` CPUs per period that a process was seen to enter; removed on
    exit (its processes must be gone by then)."""
    if cores <= 0:
        raise CnnserveError(f"a CPU quota must be above 0 cores, received {cores:g}")
    found = writable_cpu_hierarchy()
    if found is None:
        raise CnnserveError(
            "no cgroup hierarchy with the cpu controller is writable here; run as root on Linux "
            "(cgroup v1's cpu mount, or v2 with cpu in cgroup.subtree_control)"
        )
    parent, kind = found
    directory = parent / f"{name}-{uuid.uuid4().hex[:8]}"
    quota_us = max(1000, round(cores * PERIOD_US))
    try:
        directory.mkdir()
        if kind == "v1":
            (directory / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (directory / "cpu.cfs_quota_us").write_text(str(quota_us))
        else:
            (directory / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
    except OSError as error:
        if directory.exists():
            directory.rmdir()
        raise CnnserveError(f"cannot make a cgroup with a CPU quota in {parent}: {error}") from None
    cgroup = QuotaCgroup(directory, cores)
    entered = subprocess.run([*cgroup.enter_prefix(), "true"], capture_output=True, text=True)
    if entered.returncode != 0:  # e.g. cgroup v2's rules on where processes may live
        directory.rmdir()
        reason = entered.stderr.strip() or f"exit {entered.returncode}"
        raise CnnserveError(f"cannot move a process into the new cgroup {directory}: {reason}")
    try:
        yield cgroup
    finally:
        for _ in range(50):  # a process that just exited may take a moment to leave it
            try:
                directory.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command in a new cgroup limited to --cpus CPUs.")
    parser.add_argument("--cpus", type=float, required=True, help="the quota: CPUs per 100 ms period")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the command to run after --")
    try:
        with quota_cgroup(args.cpus, "cnnserve-run") as cgroup:
            return subprocess.run([*cgroup.enter_prefix(), *command]).returncode
    except CnnserveError as error:
        print(f"cpu_cgroup: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
