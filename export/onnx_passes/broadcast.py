"""`rank_match_scalar_constants`: a one-element constant of an element-wise op gets the rank of
the other operand (`1/255` becomes `[[[[1/255]]]]`).

Same values; but ONNX Runtime broadcasts a rank-0 or rank-1 constant against an NHWC tensor
with one channel in one-element spans, which made the `Rescaling` multiply a large part of a
small model's batch (BENCHMARKS.md, "rank_match_scalar_constants").
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from cnnserve.contracts.onnx_graph import initializers_of, static_shapes

ELEMENTWISE_BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min")


def rank_match_scalar_constants(model: onnx.ModelProto) -> int:
    """Reshapes one-element constants of element-wise ops to the other operand's rank."""
    inits = initializers_of(model)
    ranks = {name: len(shape) for name, shape in static_shapes(model).items()}
    rewrites = 0
    for node in model.graph.node:
        if node.op_type not in ELEMENTWISE_BINARY_OPS or len(node.input) != 2:
            continue
        for side in (0, 1):
            constant, other = node.input[side], node.input[1 - side]
            if constant not in inits or other not in ranks:
                continue
            value = numpy_helper.to_array(inits[constant])
            rank = ranks[other]
            if value.size != 1 or value.ndim >= rank:
                continue
            name = f"{constant}__rank{rank}"
            if name not in inits:
                inits[name] = numpy_helper.from_array(value.reshape([1] * rank), name)
                model.graph.initializer.append(inits[name])
            node.input[side] = name
            rewrites += 1
    return rewrites
