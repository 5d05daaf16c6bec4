"""serving/README.md's streaming example, run as written against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

README = Path(__file__).resolve().parents[2] / "serving" / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Many single images from one client: stream them") :]
    (code,) = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 1)], re.DOTALL)
    return code


def test_the_streaming_example_answers_every_image_with_the_models_logits(server, repository: Path):
    """The example's 32 requests on one stream each come back once, by request id, with what
    ONNX Runtime computes for that image on the newest version (2: the example names none); only
    the target and the model name are swapped in."""
    code = _example()
    assert '"localhost:8500"' in code and '"mnist_cnn"' in code
    code = code.replace('"localhost:8500"', repr(server.target)).replace('"mnist_cnn"', '"cnn"')
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # the documented example itself
    session = ort.InferenceSession(str(repository / "cnn/2/model.onnx"), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["logits"], {"images": scope["images"][:1]})
    assert sorted(scope["logits"]) == list(range(32))
    for logits in scope["logits"].values():
        np.testing.assert_allclose(logits, expected[0], rtol=1e-5, atol=1e-6)
