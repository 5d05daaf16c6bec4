"""LRN decomposition: a real TensorFlow LRN through tf2onnx, then our pass, against TensorFlow."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx

from cnnserve.export.onnx_optimize import op_counts, optimize


@pytest.mark.parametrize(
    ("channels", "depth_radius", "beta"),
    [(64, 4, 0.75), (48, 4, 0.75), (5, 2, 0.75), (3, 4, 0.75), (16, 3, 0.5)],
)
def test_decomposed_lrn_matches_tensorflow(channels: int, depth_radius: int, beta: float):
    @tf.function(autograph=False)
    def lrn(x):
        return tf.nn.local_response_normalization(
            x, depth_radius=depth_radius, bias=1.0, alpha=0.001 / 9.0, beta=beta
        )

    spec = [tf.TensorSpec([None, 7, 7, channels], tf.float32, name="x")]
    converted, _ = tf2onnx.convert.from_function(lrn, input_signature=spec, opset=18)
    assert op_counts(converted).get("LRN") == 1
    optimized, report = optimize(converted)
    assert report.passes["decompose_lrn"] == 1
    ops = op_counts(optimized)
    assert "LRN" not in ops and ops["Conv"] == 1
    # β = 0.75 (the tutorials') divides by √d·√√d; any other β falls back to Pow.
    assert ("Pow" in ops) == (beta != 0.75) and (ops.get("Sqrt") == 2) == (beta == 0.75)
    images = np.random.default_rng(channels).uniform(0, 40, size=(4, 7, 7, channels)).astype(np.float32)
    session = ort.InferenceSession(optimized.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": images})[0]
    np.testing.assert_allclose(got, lrn(images).numpy(), atol=1e-5, rtol=1e-5)
