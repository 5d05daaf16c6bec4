"""Removes what tf2onnx leaves behind in an NHWC Keras graph, keeping the result bit-for-bit sound.

`optimize` runs the passes of `cnnserve.export.onnx_passes` in this order (the report lists
them so, with the rewrites each made):
- `fold_batch_invariant_shapes` (shapes): shape chains that do not depend on the batch become
  constants; Reshape targets `[B, N…]` become `[-1, N…]`.
- `transpose_into_matmul`, `transpose_into_reduce` (transposes): the NCHW → NHWC Transpose in
  front of a flatten or a global pooling is absorbed into the weights or the reduced axes.
- `decompose_lrn` (lrn): LRN as a banded 1x1 Conv and element-wise ops.
- `rank_match_scalar_constants` (broadcast): one-element constants get the other operand's rank.
- `relu_before_max_pool`, `merge_sibling_convs` (convs): ReLUs moved next to their Conv, and
  sibling Convs feeding one Concat merged into one.
- `remove_dead_nodes` (cleanup): nodes and initializers nothing reads.
Why each pays off, with the measurements, is in BENCHMARKS.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from cnnserve.export.onnx_passes.broadcast import rank_match_scalar_constants
from cnnserve.export.onnx_passes.cleanup import remove_dead_nodes
from cnnserve.export.onnx_passes.convs import merge_sibling_convs, relu_before_max_pool
from cnnserve.export.onnx_passes.lrn import decompose_lrn
from cnnserve.export.onnx_passes.shapes import fold_batch_invariant_shapes
from cnnserve.export.onnx_passes.transposes import transpose_into_matmul, transpose_into_reduce

# The pipeline, in order: later passes rely on the shapes folded and the layout cleaned by
# earlier ones, and remove_dead_nodes sweeps what all of them replaced.
PASSES: tuple[Callable[[onnx.ModelProto], int], ...] = (
    fold_batch_invariant_shapes,
    transpose_into_matmul,
    transpose_into_reduce,
    decompose_lrn,
    rank_match_scalar_constants,
    relu_before_max_pool,
    merge_sibling_convs,
    remove_dead_nodes,
)


@dataclass(frozen=True)
class OptimizeReport:
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    passes: dict[str, int]  # pass → rewrites made


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def optimize(
    model: onnx.ModelProto, passes: tuple[Callable[[onnx.ModelProto], int], ...] = PASSES
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """A rewritten copy of `model`. `passes` (a subsequence of PASSES) lets
    scripts/export_pass_ab.py measure the pipeline without one of them."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    before = op_counts(model)
    rewrites = {graph_pass.__name__: graph_pass(model) for graph_pass in passes}  # in order
    after = op_counts(model)
    report = OptimizeReport(sum(before.values()), sum(after.values()), before, after, rewrites)
    return model, report
