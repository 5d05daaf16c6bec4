import os

import pytest

# Quiet TensorFlow's C++ start-up logging in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# `make test` runs the suite on two pytest-xdist workers (the suite waits on servers and child
# processes about half the time on a 2-core machine). The tests of one file run on one
# worker (their module fixtures are built once), and so do files sharing an expensive session
# fixture: every export test shares the folded zoo runs, and the resume and multi-worker tests
# share one reference training run.
_GROUPS = {
    "tests/export/": "export_runs",
    "tests/training/test_distribute.py": "small_reference_run",
    "tests/training/test_resume.py": "small_reference_run",
}


def group_of(nodeid: str) -> str:
    """The work unit a test belongs to: its group above, else its file."""
    path = nodeid.split("::")[0]
    return next((name for prefix, name in _GROUPS.items() if path.startswith(prefix)), path)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` by `group_of`. xdist's own loadgroup reads groups from a suffix it
    writes into each node id, which pytest 9.2's structured ids silently drop (every test was
    scheduled on its own and each worker built the shared fixtures again: pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return SharedFixtureScheduling(config, log)
