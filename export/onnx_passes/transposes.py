"""The NCHW → NHWC Transposes tf2onnx leaves in front of a Keras flatten or global pooling,
absorbed into the op that reads them.

- `transpose_into_matmul`: Transpose → Flatten → MatMul becomes Flatten → MatMul with the
  weight rows permuted to NCHW order.
- `transpose_into_reduce`: Transpose → ReduceMean/ReduceMax (keepdims=0, as global pooling)
  reduces the NCHW axes directly when the kept axes keep their order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnnserve.contracts.onnx_graph import (
    attribute_of,
    consumers_of,
    initializers_of,
    producers_of,
    static_dims,
)

REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")


def transpose_into_matmul(model: onnx.ModelProto) -> int:
    """Transpose(NCHW→NHWC) → Reshape[-1, HWC] → MatMul(W): permute W's rows instead."""
    inits = initializers_of(model)
    producers, consumers = producers_of(model), consumers_of(model)
    rewrites = 0
    for reshape in list(model.graph.node):
        if reshape.op_type != "Reshape" or reshape.input[1] not in inits:
            continue
        transpose = producers.get(reshape.input[0])
        if transpose is None or transpose.op_type != "Transpose":
            continue
        if list(attribute_of(transpose, "perm", [])) != [0, 2, 3, 1]:
            continue
        target = numpy_helper.to_array(inits[reshape.input[1]])
        users = consumers.get(reshape.output[0], [])
        if target.tolist()[:1] not in ([-1], [0]) or target.size != 2 or not users:
            continue
        if len(consumers.get(transpose.output[0], [])) != 1:
            continue
        if not all(u.op_type in ("MatMul", "Gemm") and u.input[0] == reshape.output[0] for u in users):
            continue
        if any(u.op_type == "Gemm" and attribute_of(u, "transB", 0) for u in users):
            continue
        weights = [u.input[1] for u in users]
        if not all(w in inits and len(consumers[w]) == 1 for w in weights):
            continue
        nchw = static_dims(model, transpose.input[0])
        if nchw is None or len(nchw) != 4 or any(d is None for d in nchw[1:]):
            continue
        _, channels, height, width = nchw
        # Row r of W reads NHWC position (h, w, c); the NCHW flatten puts it at (c, h, w).
        order = np.arange(height * width * channels).reshape(height, width, channels)
        order = order.transpose(2, 0, 1).reshape(-1)
        for name in weights:
            weight = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(weight[order], name))
        reshape.input[0] = transpose.input[0]
        rewrites += 1
    return rewrites


def transpose_into_reduce(model: onnx.ModelProto) -> int:
    """Transpose → Reduce(axes, keepdims=0): reduce the untransposed axes when that is exact."""
    inits = initializers_of(model)
    producers, consumers = producers_of(model), consumers_of(model)
    rewrites = 0
    for reduce in list(model.graph.node):
        if reduce.op_type not in REDUCE_OPS or attribute_of(reduce, "keepdims", 1) != 0:
            continue
        transpose = producers.get(reduce.input[0])
        if transpose is None or transpose.op_type != "Transpose":
            continue
        if len(consumers.get(transpose.output[0], [])) != 1:
            continue
        perm = list(attribute_of(transpose, "perm", []))
        if len(reduce.input) > 1 and reduce.input[1] in inits:
            axes = numpy_helper.to_array(inits[reduce.input[1]]).tolist()
        else:
            axes = attribute_of(reduce, "axes")
        if not perm or axes is None:
            continue
        axes = [axis % len(perm) for axis in axes]
        kept = [perm[i] for i in range(len(perm)) if i not in axes]
        if kept != sorted(kept):
            continue
        new_axes = np.array(sorted(perm[axis] for axis in axes), dtype=np.int64)
        if len(reduce.input) > 1:
            name = f"{reduce.name}__axes"
            model.graph.initializer.append(numpy_helper.from_array(new_axes, name))
            reduce.input[1] = name
        else:
            for attribute in reduce.attribute:
                if attribute.name == "axes":
                    attribute.CopyFrom(helper.make_attribute("axes", new_axes.tolist()))
        reduce.input[0] = transpose.input[0]
        rewrites += 1
    return rewrites
