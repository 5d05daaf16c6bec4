"""training/api.py: the names later stages use resolve, and importing it loads no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from cnnserve.training import api


def test_importing_the_api_loads_no_tensorflow() -> None:
    code = (
        "import sys; from cnnserve.training.api import import_tensorflow_quietly; "
        "import cnnserve.export.cli; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_public_name_resolves() -> None:
    missing = [name for name in api.__all__ if getattr(api, name, None) is None]
    assert missing == []
    assert sorted(api.__all__) == sorted(api._PUBLIC)
    assert api.zoo_flops_per_image("mnist_cnn") == 6_726_144
    assert api.zoo_flops_per_image("not_a_model") is None
