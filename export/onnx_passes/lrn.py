"""`decompose_lrn`: LRN as x · (bias + Conv1x1(x²))^(−β), with a banded C×C weight holding α/size
(β = 0.75 as x / (√d·√√d)).

Exact up to float rounding. ONNX Runtime's LRN kernel is a slow, serial loop, while the 1x1
Conv and the element-wise ops run on its tuned, multi-threaded kernels (BENCHMARKS.md, "LRN").
Every node it adds carries `LRN_MARK` in its name, so the int8 quantizer can keep them float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnnserve.contracts.onnx_graph import attribute_of, static_dims

LRN_MARK = "_decomposed"


def decompose_lrn(model: onnx.ModelProto) -> int:
    """LRN(x) = x · (bias + α/size · Σ_window x²)^(−β), the window sum as a 1x1 banded Conv."""
    rewrites = 0
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        dims = static_dims(model, node.input[0]) if node.op_type == "LRN" else None
        if dims is None or len(dims) != 4 or dims[1] is None:
            nodes.append(node)
            continue
        channels, size = dims[1], int(attribute_of(node, "size"))
        alpha, beta = float(attribute_of(node, "alpha", 1e-4)), float(attribute_of(node, "beta", 0.75))
        bias = float(attribute_of(node, "bias", 1.0))
        # ONNX sums channels [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉].
        low, high = (size - 1) // 2, (size - 1) - (size - 1) // 2
        band = np.zeros((channels, channels, 1, 1), np.float32)
        for out in range(channels):
            band[out, max(0, out - low) : out + high + 1] = alpha / size
        prefix = f"{node.name or f'lrn{index}'}{LRN_MARK}"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(band, f"{prefix}_band"),
                numpy_helper.from_array(np.full(channels, bias, np.float32), f"{prefix}_bias"),
            ]
        )
        if beta != 0.75:
            model.graph.initializer.append(
                numpy_helper.from_array(np.array(-beta, np.float32), f"{prefix}_neg_beta")
            )
        x = node.input[0]
        square, window = f"{prefix}_square", f"{prefix}_denominator"
        nodes.append(helper.make_node("Mul", [x, x], [square], name=square))
        nodes.append(
            helper.make_node("Conv", [square, f"{prefix}_band", f"{prefix}_bias"], [window], name=window)
        )
        nodes.extend(_divide_by_power(x, window, beta, node.output[0], prefix))
        rewrites += 1
    if rewrites:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewrites


def _divide_by_power(x: str, base: str, beta: float, output: str, prefix: str) -> list[onnx.NodeProto]:
    """output = x · base^(−β). For the tutorials' β = 0.75, x / (√b · √√b): ONNX Runtime's Pow
    computes exp·log per element, slower than two square roots."""
    if beta == 0.75:
        root, fourth, power = f"{prefix}_sqrt", f"{prefix}_fourth_root", f"{prefix}_power"
        return [
            helper.make_node("Sqrt", [base], [root], name=root),
            helper.make_node("Sqrt", [root], [fourth], name=fourth),
            helper.make_node("Mul", [root, fourth], [power], name=power),
            helper.make_node("Div", [x, power], [output], name=f"{prefix}_divide"),
        ]
    scale = f"{prefix}_scale"
    return [
        helper.make_node("Pow", [base, f"{prefix}_neg_beta"], [scale], name=f"{prefix}_pow"),
        helper.make_node("Mul", [x, scale], [output], name=f"{prefix}_apply"),
    ]
