"""Filter padding to ONNX Runtime's NCHWc block: bit-exact, and it really keeps the pool blocked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import flatten_cnn_model, images, write_model

from cnnserve.bench.options import RuntimeOptions
from cnnserve.bench.ort_backend import OrtBackend
from cnnserve.serving.nchwc_padding import nchwc_block_size, pad_filters_to_block
from cnnserve.serving.session import CPU, ModelSession, SessionSettings

FILTERS = 36  # mnist_cnn's conv2


def _conv_pool_flatten_matmul(leak: str | None = None, reader: str = "MatMul") -> onnx.ModelProto:
    """x → Conv(36) → Relu → MaxPool → Reshape[-1, 36·7·7] → MatMul → y (or the pool → Conv → y).

    `leak` names a tensor inside the Conv → pool chain to expose as a second graph output, which
    would make the added channels visible to the caller.
    """
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    initializers = [weight("w1", FILTERS, 4, 3, 3), weight("b1", FILTERS)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    if reader == "MatMul":
        initializers += [
            numpy_helper.from_array(np.array([-1, FILTERS * 49], np.int64), "flat"),
            weight("fc", FILTERS * 49, 10),
        ]
        nodes += [
            helper.make_node("Reshape", ["pool1", "flat"], ["features"]),
            helper.make_node("MatMul", ["features", "fc"], ["y"]),
        ]
    else:
        initializers.append(weight("w2", 16, FILTERS, 3, 3))
        nodes.append(helper.make_node("Conv", ["pool1", "w2"], ["y"], pads=[1, 1, 1, 1]))
    y_shape = ["N", 10] if reader == "MatMul" else ["N", 16, 7, 7]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if leak:
        outputs.append(helper.make_tensor_value_info(leak, TensorProto.FLOAT, ["N", FILTERS, "H", "W"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 14, 14])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def _session(model: onnx.ModelProto, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=[CPU])


def _dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {init.name: list(init.dims) for init in model.graph.initializer}


@pytest.mark.parametrize("block", [8, 16])
def test_padding_adds_zero_filters_and_keeps_every_output_bit_for_bit(block: int) -> None:
    model = _conv_pool_flatten_matmul()
    padded = onnx.ModelProto.FromString(model.SerializeToString())
    report = pad_filters_to_block(padded, block)
    onnx.checker.check_model(padded)
    width = -(-FILTERS // block) * block
    assert [(conv.filters, conv.padded_to) for conv in report] == [(FILTERS, width)]
    dims = _dims(padded)
    assert dims["w1"] == [width, 4, 3, 3] and dims["b1"] == [width]
    assert dims["fc"] == [width * 49, 10]
    target = numpy_helper.to_array(next(i for i in padded.graph.initializer if i.name == "flat"))
    assert target.tolist() == [-1, width * 49]
    x = np.random.default_rng(1).normal(0, 1, (5, 4, 14, 14)).astype(np.float32)
    before, after = _session(model).run(["y"], {"x": x})[0], _session(padded).run(["y"], {"x": x})[0]
    assert before.shape == after.shape == (5, 10)
    assert np.array_equal(before, after)


@pytest.mark.parametrize(("leak", "reader"), [("relu1", "MatMul"), ("pool1", "MatMul"), (None, "Conv")])
def test_channels_someone_else_reads_are_left_alone(leak: str | None, reader: str) -> None:
    model = _conv_pool_flatten_matmul(leak=leak, reader=reader)
    assert pad_filters_to_block(model, 16) == []
    assert _dims(model)["w1"][0] == FILTERS


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return {
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":")[1].split()
    }


def test_the_probe_finds_the_block_onnx_runtime_uses_on_this_cpu() -> None:
    # MLAS blocks by 16 with AVX-512F and by 8 with AVX2 on x86-64; a probe that finds nothing
    # there has lost track of ONNX Runtime (a renamed domain, say) and must not pass silently.
    flags = _cpu_flags()
    expected = 16 if "avx512f" in flags else 8 if "avx2" in flags else None
    if expected is None:
        pytest.skip("no AVX2 on this CPU: its NCHWc block is not pinned down here")
    assert nchwc_block_size() == expected


def test_padding_is_what_keeps_the_pool_in_onnx_runtimes_blocked_layout(tmp_path: Path) -> None:
    block = nchwc_block_size()
    if block == 0:
        pytest.skip("this ONNX Runtime build has no NCHWc kernels on this CPU")
    assert block in (4, 8, 16, 32) and FILTERS % block

    def blocked_pools(model: onnx.ModelProto, name: str) -> int:
        _session(model, tmp_path / name)
        optimized = onnx.load(tmp_path / name)
        return sum(n.op_type == "MaxPool" and n.domain.endswith("nchwc") for n in optimized.graph.node)

    model = _conv_pool_flatten_matmul()
    assert blocked_pools(model, "plain.onnx") == 0
    pad_filters_to_block(model, block)
    assert blocked_pools(model, "padded.onnx") == 1


def test_server_and_bench_sessions_run_the_padded_model_with_the_files_results(tmp_path: Path) -> None:
    write_model(tmp_path, "flat", flatten_cnn_model(filters=12))
    path = tmp_path / "flat/1/model.onnx"
    batch = images(6)
    reference = ort.InferenceSession(str(path), providers=[CPU]).run(["logits"], {"images": batch})[0]
    served = ModelSession(path, SessionSettings(CPU, cpu_threads=1))
    bench = OrtBackend(path, RuntimeOptions(device="cpu", intra_op_threads=1))
    block = nchwc_block_size()
    expected = [(12, -(-12 // block) * block)] if block and 12 % block else []
    assert [(conv.filters, conv.padded_to) for conv in served.padded_convs] == expected
    assert [(conv.filters, conv.padded_to) for conv in bench.padded_convs] == expected
    assert bench.settings()["nchwc_padded"] == [f"conv: {a}→{b}" for a, b in expected]
    assert np.array_equal(served.run(batch)["logits"], reference)
    assert np.array_equal(bench.run(batch), reference)
    # Below ONNX Runtime's top optimization level there are no blocks to pad for.
    basic = ModelSession(path, SessionSettings(CPU, cpu_threads=1, graph_optimization="basic"))
    assert basic.padded_convs == []
