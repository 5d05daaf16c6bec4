"""The uninterrupted single-process run the resume and multi-worker tests compare against."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnserve.cli import main
from tests.training.small_run import SMALL_RUN


@pytest.fixture(scope="session")
def small_reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *SMALL_RUN, "--out", str(out), "--no-fold"]) == 0
    return out
