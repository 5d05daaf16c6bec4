"""Server subprocesses started by tests die with the test process, even when pytest crashes.

The death signal is armed by the child itself, after `exec`, not by a Popen `preexec_fn`: a
`preexec_fn` forces a real `fork()` of pytest, whose gRPC fork handlers restart the event-engine
poller in the child, and `close_fds` then closes its epoll descriptor under it (the server aborts
with "epoll_wait error: Bad file descriptor"). Without `preexec_fn`, Popen uses vfork and runs no
fork handlers at all.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def module_command(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args…` and gets SIGTERM (a graceful drain) if we die first."""
    return [sys.executable, __file__, str(os.getpid()), module, *args]


def _arm_and_run(parent_pid: int, module: str, args: list[str]) -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        sys.exit("child_processes: parent already gone")
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()  # as `python -m` would have it, not this file's folder
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _arm_and_run(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
