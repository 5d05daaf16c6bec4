"""The checked-in generated code matches the .proto files, and our V2 protos match Triton's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "scripts" / "generate_protos.py"  # a developer tool, not installed
PROTO_DIR = REPO / "protos"


# Prints {message full name: {field name: [number, type, label]}} for our V2 descriptors.
# A subprocess, because tritonclient registers the same `inference.*` names in this process.
DUMP_OURS = """
import json
from cnnserve.protos import grpc_service_pb2, model_config_pb2

def walk(message, out):
    out[message.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in message.fields}
    for nested in message.nested_types:
        walk(nested, out)

out = {}
for module in (grpc_service_pb2, model_config_pb2):
    for message in module.DESCRIPTOR.message_types_by_name.values():
        walk(message, out)
service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
out["methods"] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
print(json.dumps(out))
"""


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    # protoc runs in a child: grpc_tools' compiler crashes in a process that already holds
    # TensorFlow's and tritonclient's descriptors (the rest of the suite loads both).
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    written = sorted(tmp_path.iterdir())
    assert {p.name for p in written} >= {
        "classifier_pb2.py",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.pyi",
    }
    for path in written:
        checked_in = PROTO_DIR / path.name
        assert checked_in.exists(), f"{path.name} is not checked in; run 'make protos'"
        assert path.read_text() == checked_in.read_text(), f"{path.name} is stale; run 'make protos'"


def test_v2_messages_match_tritons_field_for_field() -> None:
    from tritonclient.grpc import model_config_pb2 as triton_config
    from tritonclient.grpc import service_pb2 as triton_service

    ours = json.loads(
        subprocess.run([sys.executable, "-c", DUMP_OURS], check=True, capture_output=True, text=True).stdout
    )
    triton_methods = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    for method, (request, response) in ours.pop("methods").items():
        assert method in triton_methods
        assert triton_methods[method].input_type.full_name == request
        assert triton_methods[method].output_type.full_name == response
    pool = triton_service.DESCRIPTOR.pool
    assert triton_config.DESCRIPTOR.pool is pool
    for message, fields in ours.items():
        theirs = pool.FindMessageTypeByName(message)
        for name, (number, kind, repeated) in fields.items():
            field = theirs.fields_by_name[name]
            assert [field.number, field.type, field.is_repeated] == [number, kind, repeated], (
                f"{message}.{name}"
            )
