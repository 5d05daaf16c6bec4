"""The layout-free ONNX passes on small hand-built graphs, against the unoptimized graph in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cnnserve.export.onnx_passes.broadcast import rank_match_scalar_constants
from cnnserve.export.onnx_passes.cleanup import remove_dead_nodes
from cnnserve.export.onnx_passes.convs import merge_sibling_convs, relu_before_max_pool


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _float(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_scalar_constants_take_the_rank_of_the_other_operand():
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "scale")  # rank 0
    offset = numpy_helper.from_array(np.array([0.5], np.float32), "offset")  # rank 1
    model = _model(
        [
            helper.make_node("Mul", ["images", "scale"], ["scaled"]),
            helper.make_node("Sub", ["offset", "scaled"], ["centred"]),  # constant on the left
            helper.make_node("Mul", ["features", "scale"], ["scaled_features"]),  # same scalar, rank 2
        ],
        [_float("images", ["batch", 28, 28, 1]), _float("features", ["batch", 10])],
        [_float("centred", ["batch", 28, 28, 1]), _float("scaled_features", ["batch", 10])],
        [scale, offset],
    )
    feeds = {
        "images": np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype(np.float32),
        "features": np.random.default_rng(1).normal(size=(3, 10)).astype(np.float32),
    }
    expected = _run(model, feeds)

    assert rank_match_scalar_constants(model) == 3
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    assert shapes["scale__rank4"] == [1, 1, 1, 1] and shapes["scale__rank2"] == [1, 1]
    assert shapes["offset__rank4"] == [1, 1, 1, 1]
    assert [list(node.input) for node in model.graph.node] == [
        ["images", "scale__rank4"], ["offset__rank4", "scaled"], ["features", "scale__rank2"],
    ]  # fmt: skip
    for got, want in zip(_run(model, feeds), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert rank_match_scalar_constants(model) == 0  # nothing left to do


def _conv_pool_relu(pool_is_also_an_output: bool) -> onnx.ModelProto:
    weight = np.random.default_rng(2).normal(size=(4, 1, 3, 3)).astype(np.float32)
    pooled_shape = ["batch", 4, 4, 4]
    outputs = [_float("activated", pooled_shape)]
    if pool_is_also_an_output:
        outputs.append(_float("pooled", pooled_shape))
    return _model(
        [
            helper.make_node("Conv", ["images", "weight"], ["features"], pads=[1, 1, 1, 1]),
            helper.make_node("MaxPool", ["features"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Relu", ["pooled"], ["activated"]),
        ],
        [_float("images", ["batch", 1, 8, 8])],
        outputs,
        [numpy_helper.from_array(weight, "weight")],
    )


def test_relu_moves_in_front_of_the_pool_with_identical_results():
    model = _conv_pool_relu(pool_is_also_an_output=False)
    feeds = {"images": np.random.default_rng(3).normal(size=(2, 1, 8, 8)).astype(np.float32)}
    (expected,) = _run(model, feeds)
    assert (expected < 0).sum() == 0 and (expected == 0).sum() > 0  # the ReLU really clips

    assert relu_before_max_pool(model) == 1
    assert [node.op_type for node in model.graph.node] == ["Conv", "Relu", "MaxPool"]
    assert model.graph.node[2].output[0] == "activated"
    onnx.checker.check_model(model)
    (got,) = _run(model, feeds)
    np.testing.assert_array_equal(got, expected)


def test_relu_stays_where_the_pooled_tensor_is_read_elsewhere():
    model = _conv_pool_relu(pool_is_also_an_output=True)
    assert relu_before_max_pool(model) == 0
    assert [node.op_type for node in model.graph.node] == ["Conv", "MaxPool", "Relu"]


def _inception_like(read_b_elsewhere: bool = False) -> onnx.ModelProto:
    """x → Conv a, Conv b (3x3, ReLU), Conv c (1x1, ReLU), MaxPool; Concat[a, b, c, pool]."""
    rng = np.random.default_rng(4)
    weights = {
        "wa": rng.normal(size=(4, 2, 3, 3)), "wb": rng.normal(size=(4, 2, 3, 3)),
        "wc": rng.normal(size=(4, 2, 1, 1)), "ba": rng.normal(size=4), "bb": rng.normal(size=4),
    }  # fmt: skip
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ca"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["ca"], ["a"]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["cb"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["cb"], ["b"]),
        helper.make_node("Conv", ["x", "wc"], ["cc"]),
        helper.make_node("Relu", ["cc"], ["c"]),
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b", "c", "p"], ["y"], axis=1),
    ]
    outputs = [_float("y", ["batch", 14, 6, 6])]
    if read_b_elsewhere:
        outputs.append(_float("b", ["batch", 4, 6, 6]))
    return _model(nodes, [_float("x", ["batch", 2, 6, 6])], outputs, inits)


def test_sibling_convs_feeding_one_concat_become_one_conv_with_identical_results():
    model = _inception_like()
    feeds = {"x": np.random.default_rng(5).normal(size=(3, 2, 6, 6)).astype(np.float32)}
    (expected,) = _run(model, feeds)

    assert merge_sibling_convs(model) == 2  # a and b; c has another kernel, p is no Conv
    assert remove_dead_nodes(model) == 4  # the two Convs and two ReLUs it replaced
    onnx.checker.check_model(model)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 2
    merged = next(node for node in convs if "__merged2" in node.name)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    assert shapes[merged.input[1]] == [8, 2, 3, 3] and shapes[merged.input[2]] == [8]
    (got,) = _run(model, feeds)
    np.testing.assert_array_equal(got, expected)


def test_a_conv_whose_output_is_read_elsewhere_is_not_merged():
    model = _inception_like(read_b_elsewhere=True)
    assert merge_sibling_convs(model) == 0
    assert sum(node.op_type == "Conv" for node in model.graph.node) == 3
