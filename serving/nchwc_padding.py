"""Pads convolution filters to ONNX Runtime's NCHWc channel block, so the pool after them stays blocked.

ONNX Runtime's CPU provider runs convolutions and pools in a blocked layout (NCHWc: 16 channels
per block with AVX-512, 8 with AVX2). A Conv whose filter count is not a multiple of the block
still runs blocked, padded inside ONNX Runtime, but the MaxPool after it does not: the output is
converted back to NCHW and pooled there. `mnist_cnn`'s conv2 has 36 filters; what padding them
gains, in-process and through the server, is in BENCHMARKS.md ("Filter padding").

The rewrite appends zero filters with zero biases up to the block. Those channels are exactly 0
through every op on the way (ReLU, max and average pooling) to a flatten, and the MatMul after it
gets zero rows for them. An NCHW flatten is channel-major, so the added terms come after all the
original ones in every sum: the results are bit-for-bit the same.

Only that reader is handled. A Conv reading the padded channels would change kernels with its
new input-channel count (results then differ in float rounding) and do more work on both sides;
nothing measured says that pays.

Done when a CPU session opens, not at export: the block depends on the machine (padding to 16
would waste a fifth of the conv on an AVX2 machine, whose block is 8, and all of it on a GPU),
and the exported file stays the model as trained.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnserve.contracts.names import CPU_PROVIDER
from cnnserve.contracts.onnx_graph import (
    attribute_of,
    consumers_of,
    graph_outputs,
    initializers_of,
    static_shapes,
)

_LOGGER = logging.getLogger(__name__)
# Per-channel ops that map an all-zero channel to an all-zero channel.
_ZERO_PRESERVING = ("Relu", "MaxPool", "AveragePool")
_PROBE_FILTERS = (4, 8, 16, 32)
_NCHWC_DOMAIN = "com.microsoft.nchwc"


@functools.cache
def nchwc_block_size() -> int:
    """The channel block of ONNX Runtime's CPU kernels here, 0 when it has none.

    Asked of ONNX Runtime itself: it rewrites a Conv into its blocked domain with the filters
    padded up to whole blocks, so the smallest padded filter count it stores is the block.
    """
    import onnxruntime as ort

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])]
    nodes, outputs, weights = [], [], []
    for filters in _PROBE_FILTERS:
        weights.append(numpy_helper.from_array(np.ones((filters, 16, 1, 1), np.float32), f"w{filters}"))
        nodes.append(helper.make_node("Conv", ["x", f"w{filters}"], [f"y{filters}"]))
        outputs.append(helper.make_tensor_value_info(f"y{filters}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "nchwc_probe", inputs, outputs, weights)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the "hardware-specific optimized model" warning is the point
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(probe.SerializeToString(), options, providers=[CPU_PROVIDER])
        optimized = onnx.load(options.optimized_model_filepath)
    shapes = {init.name: list(init.dims) for init in optimized.graph.initializer}
    blocked = [
        shapes[node.input[1]][0]
        for node in optimized.graph.node
        if node.domain == _NCHWC_DOMAIN and node.op_type == "Conv" and node.input[1] in shapes
    ]
    return min(blocked, default=0)


@dataclass(frozen=True)
class PaddedConv:
    name: str
    filters: int
    padded_to: int


def pad_filters_to_block(model: onnx.ModelProto, block: int) -> list[PaddedConv]:
    """Conv(W[C…]) → ReLU/pools → flatten → MatMul: W gets zero filters up to a multiple of
    `block`, the MatMul zero rows for them. Modifies `model`; returns what it padded."""
    if block <= 1:
        return []
    return _Padder(model).pad(block)


class _Padder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = initializers_of(model)
        self.consumers = consumers_of(model)
        self.graph_outputs = graph_outputs(model)
        self._shapes: dict[str, list[int | None]] | None = None

    @property
    def shapes(self) -> dict[str, list[int | None]]:
        if self._shapes is None:  # shape inference only for models that have a candidate
            self._shapes = static_shapes(self.model)
        return self._shapes

    def pad(self, block: int) -> list[PaddedConv]:
        padded: list[PaddedConv] = []
        for conv in list(self.model.graph.node):
            if (
                conv.op_type != "Conv"
                or attribute_of(conv, "group", 1) != 1
                or conv.input[1] not in self.inits
            ):
                continue
            has_bias = len(conv.input) > 2 and bool(conv.input[2])
            if has_bias and conv.input[2] not in self.inits:
                continue
            filters = self.inits[conv.input[1]].dims[0]
            extra = -filters % block
            if extra == 0:
                continue
            end = self._end_of_zero_preserving_chain(conv.output[0])
            readers = self.consumers.get(end, []) if end is not None else []
            rewrites = [self._zero_weights_for(reader, end, filters, extra) for reader in readers]
            if not rewrites or any(rewrite is None for rewrite in rewrites):
                continue
            self._pad_axis(conv, 1, 0, extra)
            if has_bias:
                self._pad_axis(conv, 2, 0, extra)
            for rewrite in rewrites:
                rewrite()
            padded.append(PaddedConv(conv.name or conv.output[0], filters, filters + extra))
        return padded

    def _end_of_zero_preserving_chain(self, tensor: str) -> str | None:
        """Follows single readers that keep zero channels zero; None if the chain leaks out."""
        while tensor not in self.graph_outputs:
            readers = self.consumers.get(tensor, [])
            if len(readers) != 1 or readers[0].op_type not in _ZERO_PRESERVING or len(readers[0].output) != 1:
                return tensor
            tensor = readers[0].output[0]
        return None

    def _zero_weights_for(self, reader: onnx.NodeProto, tensor: str, filters: int, extra: int):
        """A closure giving `reader` zero weights for the added channels; None if it cannot."""
        if reader.op_type != "Reshape" or reader.input[0] != tensor or reader.input[1] not in self.inits:
            return None
        dims = self.shapes.get(tensor)
        if dims is None or len(dims) != 4 or any(d is None for d in dims[1:]) or dims[1] != filters:
            return None
        pixels = dims[2] * dims[3]
        target = numpy_helper.to_array(self.inits[reader.input[1]]).tolist()
        if target not in ([-1, filters * pixels], [0, filters * pixels], [0, -1]):
            return None
        matmuls = self.consumers.get(reader.output[0], [])
        if not matmuls or not all(
            m.op_type == "MatMul" and m.input[0] == reader.output[0] and m.input[1] in self.inits
            for m in matmuls
        ):
            return None

        def rewrite() -> None:
            self._replace(reader, 1, np.array([-1, (filters + extra) * pixels], np.int64))
            for matmul in matmuls:
                # An NCHW flatten is channel-major: the added channels' rows come last.
                self._pad_axis(matmul, 1, 0, extra * pixels)

        return rewrite

    def _pad_axis(self, node: onnx.NodeProto, index: int, axis: int, extra: int) -> None:
        array = numpy_helper.to_array(self.inits[node.input[index]])
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, extra)
        self._replace(node, index, np.pad(array, widths))

    def _replace(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Sets input `index` of `node` to `value`; in place unless another node reads it too."""
        name = node.input[index]
        if len(self.consumers.get(name, [])) == 1:
            self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
            return
        fresh = f"{name}__padded_for_{node.name or node.output[0]}"
        self.inits[fresh] = numpy_helper.from_array(value, fresh)
        self.model.graph.initializer.append(self.inits[fresh])
        self.consumers[name].remove(node)
        self.consumers[fresh] = [node]
        node.input[index] = fresh


def cpu_session_model(path: Path, graph_optimization: str) -> tuple[str | bytes, list[PaddedConv]]:
    """What a CPU session should open for `path`: the file, or the padded model's bytes.

    The blocked layout exists only at ONNX Runtime's highest optimization level; below it the
    added filters would be work for nothing. A model this rewrite cannot read is left to ONNX
    Runtime, whose own load error is the one to report.
    """
    block = nchwc_block_size() if graph_optimization == "all" else 0
    if not block:
        return str(path), []
    try:
        model = onnx.load(str(path))
        padded = pad_filters_to_block(model, block)
    except Exception as error:  # onnx raises DecodeError, ValidationError, InferenceError, OSError…
        _LOGGER.debug("no NCHWc padding for %s: %s", path, error)
        return str(path), []
    for conv in padded:
        _LOGGER.info(
            "%s: %s padded from %d to %d filters (ONNX Runtime's %d-channel blocks; exact)",
            path, conv.name, conv.filters, conv.padded_to, block,
        )  # fmt: skip
    return (model.SerializeToString(), padded) if padded else (str(path), [])
