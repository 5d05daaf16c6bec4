"""Checks that a folded model is the trained one: logit parity and no BatchNorm arithmetic left.

Parity is measured on real test images at batch sizes 1 and 256, batch size against batch size
(oneDNN picks a different summation order per batch size); the graph check traces the folded
model and looks for BatchNorm ops, anything in a BatchNorm layer's name scope, and per-channel
multiply-adds beyond the ones kept on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from cnnserve.contracts.parity import (
    MAX_ABS_LOGIT_DIFF,
    PARITY_BATCH_SIZES,
    PARITY_LIMIT,
    REL_LOGIT_DIFF,
    Parity,
)
from cnnserve.contracts.run_dir import FoldKind
from cnnserve.training.fold import FoldedModel, FoldError

# Ops that are BatchNorm arithmetic wherever they appear.
BN_OP_TYPES = frozenset(
    {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization"}
)
ELEMENTWISE_OP_TYPES = frozenset({"Mul", "AddV2", "Add", "Sub", "RealDiv"})


# --------------------------------------------------------------------------- graph check


def _scope_names(op_name: str) -> set[str]:
    # Keras scopes ops as "<model>_1/<layer>_1/..."; the suffix counts calls.
    return {re.sub(r"_\d+$", "", part) for part in op_name.split("/")[:-1]}


def batchnorm_arithmetic(
    model: keras.Model, bn_names: Iterable[str], affine_names: Iterable[str] = ()
) -> list[str]:
    """Ops on the traced inference graph that are BatchNorm arithmetic; empty when none remain.

    Traces `model(images, training=False)` to a TF graph and flags (1) fused BN kernels and
    Rsqrt of a per-channel vector,
    (2) any op in the name scope of one of `bn_names` (the original model's BN layers) and
    (3) any element-wise op that combines an activation with a per-channel vector (the
    Mul/Add/Sub that Keras lowers BN to), except exactly one Mul and one Add inside each
    `ChannelAffine` layer named in `affine_names`.
    """
    bn_names, affine_names = set(bn_names), set(affine_names)
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    findings: list[str] = []
    affine_ops: dict[str, list[str]] = {name: [] for name in affine_names}
    for op in graph.get_operations():
        scopes = _scope_names(op.name)
        if op.type in BN_OP_TYPES or (op.type == "Rsqrt" and op.inputs[0].shape.rank == 1):
            # 1/√(σ²+ε) of a per-channel vector; per-image standardization's Rsqrt is rank 4.
            findings.append(f"{op.type} op {op.name}")
        elif scopes & bn_names:
            findings.append(f"{op.type} op {op.name} of BatchNorm {sorted(scopes & bn_names)[0]}")
        elif op.type in ELEMENTWISE_OP_TYPES and _is_per_channel(op):
            owner = scopes & affine_names
            if owner:
                affine_ops[owner.pop()].append(op.type)
            else:
                findings.append(f"per-channel {op.type} op {op.name}")
    for name, ops in affine_ops.items():
        if sorted(ops) not in (["AddV2", "Mul"], ["Add", "Mul"]):
            findings.append(f"affine {name} has ops {ops}, expected one Mul and one Add")
    return findings


def _is_per_channel(op) -> bool:
    shapes = [tensor.shape for tensor in op.inputs]
    if len(shapes) != 2 or any(shape.rank is None for shape in shapes):
        return False
    vector, activation = sorted(shapes, key=lambda shape: shape.rank)
    return (
        vector.rank == 1
        and activation.rank >= 2
        and vector[0] is not None
        and vector[0] > 1
        and activation[-1] == vector[0]
    )


# --------------------------------------------------------------------------- parity


def run_batched(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int):
    return np.concatenate([np.asarray(predict(images[i : i + batch])) for i in range(0, len(images), batch)])


def compare(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
) -> Parity:
    """Runs both on `images` at each batch size and compares the logits batch size for batch
    size, so kernels that pick a different summation order per batch size do not count."""
    pairs = (
        (run_batched(reference, images, batch), run_batched(candidate, images, batch))
        for batch in batch_sizes
    )
    return Parity.of(pairs, len(images), batch_sizes)


def keras_predictor(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda images: function(tf.constant(images)).numpy()


def first_divergence(folded: FoldedModel, original: keras.Model, images: np.ndarray) -> str:
    """Names the first layer whose folded output departs from the original's."""
    names = [layer.name for layer in original.layers if layer.name in folded.matching]
    if not names:
        return "the output"
    originals = keras.Model(original.inputs[0], [folded.matching[n][0] for n in names])
    candidates = keras.Model(folded.model.inputs[0], [folded.matching[n][1] for n in names])
    expected, got = originals(images[:64], training=False), candidates(images[:64], training=False)
    for name, want, have in zip(names, expected, got, strict=True):
        want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
        if np.any(np.abs(want - have) > MAX_ABS_LOGIT_DIFF + REL_LOGIT_DIFF * np.abs(want)):
            return name
    return names[-1]


def verify_fold(
    folded: FoldedModel,
    original: keras.Model,
    images: np.ndarray,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
) -> Parity:
    """Numerical and structural checks; raises FoldError naming the layer at fault."""
    bn_names = [f.layer for f in folded.folds]
    affine_names = [f"{f.layer}_affine" for f in folded.folds if f.kind is FoldKind.AFFINE]
    leftovers = batchnorm_arithmetic(folded.model, bn_names, affine_names)
    if leftovers:
        raise FoldError(f"BatchNorm arithmetic left in the folded graph: {'; '.join(leftovers)}")
    parity = compare(keras_predictor(original), keras_predictor(folded.model), images, batch_sizes)
    if not parity.ok:
        layer = first_divergence(folded, original, images)
        raise FoldError(
            f"folded model differs from the trained one from layer {layer!r} on: max |Δlogit| "
            f"{parity.max_abs_logit_diff:.3g} (limit {PARITY_LIMIT}), top-1 agreement "
            f"{parity.top1_agreement:.2%}; report this model to the cnnserve maintainers"
        )
    return parity
