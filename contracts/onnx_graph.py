"""Small read-only views of an ONNX graph (who produces and who reads each tensor, initializers,
attributes, inferred static shapes) and the topological re-sort that rewrites need."""

from __future__ import annotations

import onnx
from onnx import helper


def initializers_of(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def consumers_of(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def producers_of(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def attribute_of(node: onnx.NodeProto, name: str, default=None):
    for item in node.attribute:
        if item.name == name:
            return helper.get_attribute_value(item)
    return default


def graph_outputs(model: onnx.ModelProto) -> set[str]:
    return {output.name for output in model.graph.output}


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor shape inference can tell (None for a symbolic dimension), initializers too."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {init.name: list(init.dims) for init in model.graph.initializer}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                dim.dim_value if dim.HasField("dim_value") else None
                for dim in info.type.tensor_type.shape.dim
            ]
    return shapes


def static_dims(model: onnx.ModelProto, tensor: str) -> list[int | None] | None:
    return static_shapes(model).get(tensor)


def sort_topologically(model: onnx.ModelProto) -> None:
    """Reorders nodes so that each comes after the producers of its inputs (ONNX requires it)."""
    available = {init.name for init in model.graph.initializer} | {i.name for i in model.graph.input}
    available.add("")
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ValueError("the ONNX graph has a cycle")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        placed = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in placed]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
