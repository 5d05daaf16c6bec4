"""`fold_batch_invariant_shapes`: the Shape → Gather → Cast → Slice → Concat chains tf2onnx
emits behind Flatten and per-image standardization, evaluated once.

They are run with ONNX Runtime at batch sizes 1 and 3; values that do not depend on the batch
become constants, and a Reshape target `[B, N…]` becomes `[-1, N…]`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnnserve.contracts.names import CPU_PROVIDER
from cnnserve.contracts.onnx_graph import initializers_of, producers_of


def fold_batch_invariant_shapes(model: onnx.ModelProto) -> int:
    """Shape-derived tensors that are the same at batch 1 and 3 become constants."""
    import onnxruntime as ort

    constants = set(initializers_of(model)) | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }
    derived: list[str] = []
    derived_set: set[str] = set()
    for node in model.graph.node:  # topological order
        inputs = [name for name in node.input if name]
        if node.op_type == "Shape" or (
            node.op_type != "Constant"
            and inputs
            and all(n in derived_set or n in constants for n in inputs)
            and any(n in derived_set for n in inputs)
        ):
            derived.extend(node.output)
            derived_set.update(node.output)
    if not derived:
        return 0
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(probe)
    types = {info.name: info for info in inferred.graph.value_info}
    probe.graph.output.extend(types[name] for name in derived if name in types)
    session = ort.InferenceSession(probe.SerializeToString(), providers=[CPU_PROVIDER])
    graph_input = model.graph.input[0]
    dims = [dim.dim_value for dim in graph_input.type.tensor_type.shape.dim[1:]]
    dtype = helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
    names = [name for name in derived if name in types]
    runs = {
        batch: dict(
            zip(names, session.run(names, {graph_input.name: np.zeros([batch, *dims], dtype)}),
                strict=True)
        )
        for batch in (1, 3)
    }  # fmt: skip
    rewrites = 0
    producers = producers_of(model)
    # Reshape targets that are [batch, static...]: use -1 for the batch.
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in runs[1]:
            continue
        one, three = runs[1][node.input[1]], runs[3][node.input[1]]
        if (
            one.ndim == 1
            and one.size >= 1
            and one[0] == 1
            and three[0] == 3
            and (np.array_equal(one[1:], three[1:]))
        ):
            target = np.concatenate([[-1], one[1:]]).astype(np.int64)
            name = f"{node.name}__static_shape"
            model.graph.initializer.append(numpy_helper.from_array(target, name))
            node.input[1] = name
            rewrites += 1
    # Batch-invariant shape values: replace their producers by initializers.
    replaced: set[int] = set()
    for name in names:
        if not np.array_equal(runs[1][name], runs[3][name]):
            continue
        node = producers[name]
        if id(node) in replaced or not all(out in runs[1] for out in node.output):
            continue
        if not all(np.array_equal(runs[1][o], runs[3][o]) for o in node.output):
            continue
        for out in node.output:
            model.graph.initializer.append(numpy_helper.from_array(runs[1][out], out))
        replaced.add(id(node))
        rewrites += 1
    kept = [node for node in model.graph.node if id(node) not in replaced]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return rewrites
