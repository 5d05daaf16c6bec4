import os

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


def pytest_collection_modifyitems(config, items) -> None:
    import pytest

    for item in items:
        path = item.nodeid.split("::")[0]
        group = next((name for prefix, name in _GROUPS.items() if path.startswith(prefix)), path)
        item.add_marker(pytest.mark.xdist_group(group))
