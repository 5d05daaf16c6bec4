"""Rewrites that let ONNX Runtime fuse or block its convolutions better.

- `relu_before_max_pool`: MaxPool → Relu becomes Relu → MaxPool (max and ReLU commute, exactly),
  so the ReLU fuses into the Conv in front of the pool instead of being a pass of its own;
  `mnist_cnn` pools before its ReLUs, as its tutorial does.
- `merge_sibling_convs`: Convs (each with its ReLU, if any) that read the same tensor with the
  same attributes and feed consecutive inputs of one channel Concat become one Conv with their
  filters stacked, whose output is that stretch of the Concat. Bit-exact (each output channel
  is computed as before); ONNX Runtime's NCHWc kernels reuse each input load for several filter
  blocks, and the inception blocks' narrow branches gave them one or two blocks each
  (BENCHMARKS.md, "merge_sibling_convs").
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnnserve.contracts.onnx_graph import (
    attribute_of,
    consumers_of,
    graph_outputs,
    initializers_of,
    producers_of,
    sort_topologically,
)


def relu_before_max_pool(model: onnx.ModelProto) -> int:
    """Conv → MaxPool → Relu: swap the pool and the ReLU when the pool's only reader is the ReLU."""
    producers, consumers = producers_of(model), consumers_of(model)
    outputs = graph_outputs(model)
    rewrites = 0
    for relu in model.graph.node:
        if relu.op_type != "Relu":
            continue
        pool = producers.get(relu.input[0])
        if pool is None or pool.op_type != "MaxPool" or len(pool.output) != 1:
            continue
        if len(consumers.get(pool.output[0], [])) != 1 or pool.output[0] in outputs:
            continue
        conv = producers.get(pool.input[0])
        if conv is None or conv.op_type != "Conv":  # only where the ReLU will fuse into a Conv
            continue
        activated = f"{relu.name or relu.output[0]}__before_pool"
        relu.input[0], relu.output[0], pool.output[0] = pool.input[0], activated, relu.output[0]
        pool.input[0] = activated
        rewrites += 1
    if rewrites:
        sort_topologically(model)
    return rewrites


def merge_sibling_convs(model: onnx.ModelProto) -> int:
    """Conv(X, Wi, bi) [→ Relu] feeding Concat inputs i..j (axis 1) → one Conv(X, [Wi..Wj])."""
    inits = initializers_of(model)
    producers, consumers = producers_of(model), consumers_of(model)
    outputs = graph_outputs(model)

    def single_use(tensor: str) -> bool:
        return len(consumers.get(tensor, [])) == 1 and tensor not in outputs

    def branch(tensor: str) -> tuple[onnx.NodeProto, onnx.NodeProto | None] | None:
        """(conv, relu or None) producing `tensor`, when both are used only on this path."""
        node = producers.get(tensor)
        relu = None
        if node is not None and node.op_type == "Relu" and single_use(tensor):
            relu, node = node, producers.get(node.input[0])
        if node is None or node.op_type != "Conv" or not single_use(node.output[0]):
            return None
        if attribute_of(node, "group", 1) != 1 or node.input[1] not in inits:
            return None
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            return None
        return node, relu

    def signature(found: tuple[onnx.NodeProto, onnx.NodeProto | None]) -> tuple:
        conv, relu = found
        attributes = sorted((a.name, str(helper.get_attribute_value(a))) for a in conv.attribute)
        kernel = tuple(inits[conv.input[1]].dims[1:])
        return conv.input[0], tuple(attributes), kernel, relu is None

    merged = 0
    added: list[onnx.NodeProto] = []
    for concat in model.graph.node:
        if concat.op_type != "Concat" or attribute_of(concat, "axis") not in (1, -3):
            continue
        inputs, rewritten, start = list(concat.input), [], 0
        while start < len(inputs):
            first = branch(inputs[start])
            group = [first] if first else []
            while group and start + len(group) < len(inputs):
                other = branch(inputs[start + len(group)])
                if other is None or signature(other) != signature(first):
                    break
                group.append(other)
            if len(group) < 2:
                rewritten.append(inputs[start])
                start += 1
                continue
            name = f"{first[0].name or first[0].output[0]}__merged{len(group)}"
            weights = np.concatenate([numpy_helper.to_array(inits[conv.input[1]]) for conv, _ in group])
            biases = np.concatenate([_conv_bias(conv, inits) for conv, _ in group])
            model.graph.initializer.extend(
                [numpy_helper.from_array(weights, f"{name}_W"), numpy_helper.from_array(biases, f"{name}_B")]
            )
            conv = helper.make_node("Conv", [first[0].input[0], f"{name}_W", f"{name}_B"], [name], name=name)
            conv.attribute.extend(first[0].attribute)
            added.append(conv)
            if first[1] is not None:
                added.append(helper.make_node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
            rewritten.append(added[-1].output[0])
            merged += len(group)
            start += len(group)
        del concat.input[:]
        concat.input.extend(rewritten)
    if merged:  # the replaced Convs and ReLUs are left for remove_dead_nodes
        model.graph.node.extend(added)
        sort_topologically(model)
    return merged


def _conv_bias(conv: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    if len(conv.input) > 2 and conv.input[2]:
        return numpy_helper.to_array(inits[conv.input[2]])
    return np.zeros(inits[conv.input[1]].dims[0], np.float32)
