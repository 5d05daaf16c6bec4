"""ModelInfer and ModelStreamInfer answer with bytes built from a cached head: they must parse into
exactly the message built field by field, for every mix of outputs, classification strings,
sizes and ids."""

from __future__ import annotations

import subprocess
import sys

# A subprocess, because tritonclient registers the same `inference.*` names in this process.
CHECK = """
from types import SimpleNamespace
import numpy as np
from cnnserve.protos import grpc_service_pb2 as pb
from cnnserve.serving import v2_converters as convert
from cnnserve.serving.dataplane import Inference, RequestedOutput as Out



def reference(inference, request_id):
    # The answer built as a message, field by field: what the bytes must parse into.
    model = inference.model
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
    response.parameters["execution_provider"].string_param = model.provider
    for output, array in convert.output_arrays(inference):
        datatype, shape, raw = convert.wire_output(array)
        response.outputs.add(name=output.name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    return response


rng = np.random.default_rng(0)
labels = SimpleNamespace(class_labels=["a", "b", "c"])
model = SimpleNamespace(name="m", version="3", provider="CPUExecutionProvider", config=labels)
checked = 0
for rows in (1, 5, 1):  # 1 again: the head comes from the cache
    outputs = {"logits": rng.random((rows, 3), dtype=np.float32), "probabilities": rng.random((rows, 3))}
    mixes = (
        (Out("logits"),),
        (Out("logits"), Out("probabilities", 2)),
        (Out("probabilities", 3), Out("logits")),
    )
    for requested in mixes:
        for request_id in ("", "req-7"):
            inference = Inference(model, outputs, None, 0, requested)
            wire = convert.infer_response_bytes(inference, request_id)
            expected = reference(inference, request_id)
            assert pb.ModelInferResponse.FromString(wire) == expected, (rows, requested, request_id)
            assert wire == convert.infer_response_bytes(inference, request_id)
            stream_wire = convert.stream_response_bytes(inference, request_id)
            streamed = pb.ModelStreamInferResponse.FromString(stream_wire)
            assert streamed == pb.ModelStreamInferResponse(infer_response=expected), (rows, requested)
            checked += 1
# The length prefix past one varint byte (answers over 127 bytes) and past two (over 16 KiB).
for rows in (40, 3000):
    big = Inference(model, {"logits": rng.random((rows, 3), dtype=np.float32)}, None, 0, (Out("logits"),))
    wire = convert.stream_response_bytes(big, "x")
    expected = pb.ModelStreamInferResponse(infer_response=reference(big, "x"))
    assert pb.ModelStreamInferResponse.FromString(wire) == expected
    checked += 1
other = SimpleNamespace(name="m", version="4", provider="CPUExecutionProvider", config=model.config)
inference = Inference(other, outputs, None, 0, (Out("logits"),))
assert pb.ModelInferResponse.FromString(convert.infer_response_bytes(inference, "")).model_version == "4"
print("checked", checked)
"""


def test_cached_head_bytes_parse_into_the_built_response() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["checked", "20"]
