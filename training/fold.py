"""BatchNorm folding: a trained Keras model → an inference-only model with no BatchNormalization.

Every BN computes `y = s·x + t` per channel at inference, with `s = γ/√(σ²+ε)` and
`t = β − μ·s` (ε read from the layer). Each BN goes to the first place where that is exact:
1. backward into the linear layer in front of it (Conv2D, DepthwiseConv2D, Dense without an
   activation and with this BN as its only consumer): `W' = W·s` on the output channels,
   `b' = s·b + t`;
2. forward into the next linear layer, through layers the affine commutes with (max pooling
   when every `s > 0`, average pooling, dropout, flatten, where the vectors are tiled over the
   flattened positions): `W' = W·s` on the input channels, `b' = b + W·t`. Never into a conv
   that zero-pads (the padded zeros would not be shifted by `t`), never past a tensor with
   more than one consumer or one that is a graph output;
3. otherwise one per-channel multiply-add (`ChannelAffine`).
The folded model is then checked numerically against the original and on its traced graph.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from cnnserve.errors import CnnserveError
from cnnserve.training import layers as cnn_layers
from cnnserve.training.data import Split, load_dataset
from cnnserve.training.run import MODEL_FILE, load_run_info

FOLDED_DIR = "inference.savedmodel"
REPORT_FILE = "export_report.json"
SERVING_SIGNATURE = "serving_default"
OUTPUT_NAMES = ("logits", "probabilities")
MAX_ABS_LOGIT_DIFF = 1e-4
# float32 rounding grows with the logits' magnitude: an overfit model with |logit| ≈ 170 differs by
# 4e-4 from summation order alone. numpy.allclose's rule: |Δ| ≤ 1e-4 + 1e-5·|logit|.
REL_LOGIT_DIFF = 1e-5
PARITY_LIMIT = f"{MAX_ABS_LOGIT_DIFF:g} + {REL_LOGIT_DIFF:g}·|logit|"
PARITY_IMAGES = 1000
PARITY_BATCH_SIZES = (1, 256)

# Layers that compute the same thing after folding, cloned from their config and weights.
CLONED = (
    layers.Rescaling, layers.Conv2D, layers.DepthwiseConv2D, layers.Dense, layers.ReLU,
    layers.Activation, layers.Softmax, layers.MaxPooling2D, layers.AveragePooling2D,
    layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D, layers.Flatten, layers.Reshape,
    layers.Concatenate, layers.Add, layers.Cropping2D, layers.ZeroPadding2D,
    cnn_layers.MeanImageSubtraction, cnn_layers.PerImageStandardization,
    cnn_layers.LocalResponseNormalization,
)  # fmt: skip
# Identity at inference: dropped from the folded graph.
DROPPED = (layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise)
LINEAR = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
# An affine y = s·x + t commutes with these (max only when s > 0).
MAX_POOLS = (layers.MaxPooling2D, layers.GlobalMaxPooling2D)
AVG_POOLS = (layers.AveragePooling2D, layers.GlobalAveragePooling2D)
# Ops that are BatchNorm arithmetic wherever they appear.
BN_OP_TYPES = frozenset(
    {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization"}
)
ELEMENTWISE_OP_TYPES = frozenset({"Mul", "AddV2", "Add", "Sub", "RealDiv"})


class FoldError(CnnserveError):
    """The model cannot be folded, or the folded model does not match the trained one."""


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="cnnserve")
class ChannelAffine(keras.layers.Layer):
    """`x·scale + offset` per channel: what is left of a BatchNorm that could not be folded."""

    def __init__(self, channels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones", trainable=False)
        self.offset = self.add_weight(name="offset", shape=(channels,), initializer="zeros", trainable=False)

    def call(self, inputs):
        return inputs * self.scale + self.offset

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="cnnserve")
class CentralCrop(keras.layers.Layer):
    """`CifarAugmentation` at inference: the central window, cast to float; no random ops."""

    def __init__(self, crop: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crop = crop

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.crop, self.crop, input_shape[3])

    def call(self, inputs):
        top = (inputs.shape[1] - self.crop) // 2
        left = (inputs.shape[2] - self.crop) // 2
        window = inputs[:, top : top + self.crop, left : left + self.crop, :]
        return tf.cast(window, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "crop": self.crop}


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class BatchNormFold:
    """Where one BatchNorm went, and why."""

    layer: str
    kind: str  # "backward" | "forward" | "affine"
    destination: str  # "into conv1", "forward into fc1 through pool1, flatten", "kept as affine"
    reason: str
    epsilon: float
    target: str | None = None
    through: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Affine:
    scale: np.ndarray  # float64, per channel
    offset: np.ndarray


class _Graph:
    """Producers and consumers of every tensor of a single-use functional model."""

    def __init__(self, model: keras.Model) -> None:
        if not isinstance(model, keras.Model) or not hasattr(model, "_inbound_nodes"):
            raise FoldError(f"expected a Keras functional model, received {type(model).__name__}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise FoldError(
                f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
                "outputs; the folder expects one uint8 image input and one logits output"
            )
        self.model = model
        self.node: dict[str, object] = {}
        self.consumers: dict[int, list[keras.layers.Layer]] = {}
        self.outputs = {id(t) for t in model.outputs}
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            self._check_known(layer)
            if len(layer._inbound_nodes) != 1:
                raise FoldError(
                    f"layer {layer.name!r} is called {len(layer._inbound_nodes)} times; the "
                    "folder supports each layer used once (rebuild the model without sharing it)"
                )
            node = layer._inbound_nodes[0]
            self.node[layer.name] = node
            for tensor in node.arguments.keras_tensors:
                self.consumers.setdefault(id(tensor), []).append(layer)

    @staticmethod
    def _check_known(layer: keras.layers.Layer) -> None:
        known = (
            *CLONED, *DROPPED, layers.BatchNormalization, cnn_layers.CifarAugmentation,
            ChannelAffine, CentralCrop,
        )  # fmt: skip
        if not isinstance(layer, known):
            raise FoldError(
                f"layer {layer.name!r} of type {type(layer).__name__} is not known to the folder; "
                "export supports "
                + ", ".join(sorted({cls.__name__ for cls in known}))
                + " (add a rule to cnnserve.training.fold)"
            )

    def input_of(self, layer) -> keras.KerasTensor:
        (tensor,) = self.node[layer.name].arguments.keras_tensors
        return tensor

    def producer(self, tensor: keras.KerasTensor):
        return tensor._keras_history.operation

    def users(self, tensor: keras.KerasTensor) -> list:
        return self.consumers.get(id(tensor), [])


def batchnorm_affine(bn: layers.BatchNormalization) -> _Affine:
    """(s, t) of an inference-mode BN in float64, with the layer's own epsilon."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + float(bn.epsilon))
    return _Affine(scale, beta - mean * scale)


def _channels_last_axis(bn: layers.BatchNormalization) -> bool:
    rank = len(bn.input.shape)
    axes = [bn.axis] if isinstance(bn.axis, int) else list(bn.axis)
    return len(axes) == 1 and axes[0] % rank == rank - 1


def _plan_backward(graph: _Graph, bn) -> tuple[object | None, str]:
    tensor = graph.input_of(bn)
    producer = graph.producer(tensor)
    if not isinstance(producer, LINEAR):
        kind = type(producer).__name__
        return None, f"follows {producer.name} ({kind}), not a conv/dense"
    if producer.get_config().get("activation", "linear") != "linear":
        return None, f"{producer.name} has a {producer.get_config()['activation']} activation"
    if len(graph.users(tensor)) != 1 or id(tensor) in graph.outputs:
        return None, f"{producer.name} has more than one consumer"
    if getattr(producer, "data_format", "channels_last") != "channels_last":
        return None, f"{producer.name} is channels_first"
    return producer, "follows a linear layer that has no other consumer"


def _plan_forward(graph: _Graph, bn, affine: _Affine) -> tuple[object | None, list, str]:
    """The linear layer the affine can move into, and the layers it passes through."""
    tensor = bn.output
    through: list = []
    while True:
        if id(tensor) in graph.outputs:
            return None, through, "its output is a graph output"
        users = graph.users(tensor)
        if len(users) != 1:
            return None, through, f"its output has {len(users)} consumers"
        (user,) = users
        if isinstance(user, MAX_POOLS):
            negative = int(np.sum(affine.scale <= 0))
            if negative:
                return (
                    None,
                    through,
                    (f"{negative} channel(s) have scale <= 0, which does not commute with {user.name}"),
                )
        elif isinstance(user, layers.Dense):
            return user, through, f"affine commutes with {_names(through) or 'nothing'}"
        elif isinstance(user, layers.Conv2D | layers.DepthwiseConv2D):
            pads = user.padding == "same" and any(k > 1 for k in user.kernel_size)
            if pads:
                return None, through, f"next is {user.name} with SAME zero padding"
            if getattr(user, "groups", 1) != 1:
                return None, through, f"next is {user.name}, a grouped conv"
            if any(isinstance(layer, layers.Flatten) for layer in through):
                return None, through, f"next is {user.name} after a flatten"
            return user, through, f"affine commutes with {_names(through) or 'nothing'}"
        elif not isinstance(user, (*AVG_POOLS, *DROPPED, layers.Flatten)):
            return None, through, f"next is {user.name} ({type(user).__name__})"
        if isinstance(user, layers.GlobalAveragePooling2D | layers.GlobalMaxPooling2D) and (user.keepdims):
            return None, through, f"next is {user.name} with keepdims"
        through.append(user)
        tensor = user.output


def _names(layer_list: Iterable) -> str:
    return ", ".join(layer.name for layer in layer_list)


def plan_folds(model: keras.Model) -> tuple[list[BatchNormFold], dict[str, _Affine]]:
    """Decides, for every BN layer, where its affine goes. Raises FoldError for unknown layers."""
    graph = _Graph(model)
    folds: list[BatchNormFold] = []
    affines: dict[str, _Affine] = {}
    for bn in model.layers:
        if not isinstance(bn, layers.BatchNormalization):
            continue
        affine = batchnorm_affine(bn)
        affines[bn.name] = affine
        epsilon = float(bn.epsilon)
        if not _channels_last_axis(bn):
            why = f"normalizes axis {bn.axis}, not the channel axis"
            folds.append(BatchNormFold(bn.name, "affine", "kept as affine", why, epsilon))
            continue
        target, why_not_back = _plan_backward(graph, bn)
        if target is not None:
            folds.append(BatchNormFold(bn.name, "backward", f"into {target.name}", why_not_back,
                                       epsilon, target.name))  # fmt: skip
            continue
        target, through, why = _plan_forward(graph, bn, affine)
        if target is not None:
            via = f" through {_names(through)}" if through else ""
            folds.append(BatchNormFold(bn.name, "forward", f"forward into {target.name}{via}",
                                       f"{why_not_back}; {why}", epsilon, target.name,
                                       tuple(layer.name for layer in through)))  # fmt: skip
            continue
        folds.append(BatchNormFold(bn.name, "affine", "kept as affine",
                                   f"{why_not_back}; {why}", epsilon))  # fmt: skip
    return folds, affines


# --------------------------------------------------------------------------- weight rewrites


def _kernel_bias(layer) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    channels = kernel.shape[-1] * (kernel.shape[-2] if isinstance(layer, layers.DepthwiseConv2D) else 1)
    bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(channels)
    return kernel, bias


def fold_backward(layer, kernel: np.ndarray, bias: np.ndarray, affine: _Affine):
    """BN after `layer`: scale the output channels. Depthwise output channel = in·mult + m."""
    scale = affine.scale
    if isinstance(layer, layers.DepthwiseConv2D):
        scale = scale.reshape(kernel.shape[-2], kernel.shape[-1])
        return kernel * scale, bias * affine.scale + affine.offset
    return kernel * scale, bias * scale + affine.offset


def fold_forward(layer, kernel: np.ndarray, bias: np.ndarray, affine: _Affine):
    """Affine before `layer` (tiled to its input size): scale input channels, shift the bias."""
    in_size = kernel.shape[0] if isinstance(layer, layers.Dense) else kernel.shape[-2]
    repeats, remainder = divmod(in_size, affine.scale.size)
    if remainder:
        raise FoldError(f"{layer.name}: {in_size} inputs do not tile {affine.scale.size} channels")
    scale, offset = np.tile(affine.scale, repeats), np.tile(affine.offset, repeats)
    if isinstance(layer, layers.Dense):
        return kernel * scale[:, None], bias + offset @ kernel
    if isinstance(layer, layers.DepthwiseConv2D):
        shift = np.einsum("hwim,i->im", kernel, offset).reshape(-1)
        return kernel * scale[None, None, :, None], bias + shift
    return kernel * scale[None, None, :, None], bias + np.einsum("hwio,i->o", kernel, offset)


# --------------------------------------------------------------------------- building


@dataclass
class FoldedModel:
    model: keras.Model
    folds: list[BatchNormFold]
    # original tensor id → folded tensor, where both compute the same values (for diagnosis)
    matching: dict[str, tuple[keras.KerasTensor, keras.KerasTensor]] = field(default_factory=dict)


def fold_model(model: keras.Model) -> FoldedModel:
    """Builds the inference-only functional model with every BatchNormalization removed."""
    folds, affines = plan_folds(model)
    graph = _Graph(model)
    by_layer = {fold.layer: fold for fold in folds}
    rewrites: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fold in folds:
        if fold.target is None:
            continue
        target = model.get_layer(fold.target)
        kernel, bias = rewrites.get(target.name) or _kernel_bias(target)
        rewrite = fold_backward if fold.kind == "backward" else fold_forward
        rewrites[target.name] = rewrite(target, kernel, bias, affines[fold.layer])

    new: dict[int, keras.KerasTensor] = {}
    for tensor in model.inputs:
        new[id(tensor)] = keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor._keras_history.operation.name
        )
    matching: dict[str, tuple[keras.KerasTensor, keras.KerasTensor]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node = graph.node[layer.name]
        (output,) = node.outputs
        if isinstance(layer, DROPPED):
            new[id(output)] = new[id(graph.input_of(layer))]
            continue
        if isinstance(layer, layers.BatchNormalization):
            fold = by_layer[layer.name]
            source = new[id(graph.input_of(layer))]
            if fold.kind == "affine":
                affine = affines[layer.name]
                clone = ChannelAffine(affine.scale.size, name=f"{layer.name}_affine")
                source = clone(source)
                clone.set_weights([affine.scale.astype(np.float32), affine.offset.astype(np.float32)])
            new[id(output)] = source
            if fold.kind != "forward":
                matching[layer.name] = (output, source)
            continue
        if isinstance(layer, cnn_layers.CifarAugmentation):
            clone = CentralCrop(layer.crop, name=layer.name)
        else:
            config = layer.get_config()
            if layer.name in rewrites:
                config["use_bias"] = True
            clone = type(layer).from_config(config)
        args, kwargs = node.arguments.fill_in(new)
        new[id(output)] = clone(*args, **kwargs)
        if layer.name in rewrites:
            kernel, bias = rewrites[layer.name]
            clone.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        elif layer.weights:
            clone.set_weights(layer.get_weights())
        matching[layer.name] = (output, new[id(output)])
    for fold in folds:
        # Backward: the target's new output is the BN's (recorded under the BN's name).
        # Forward: the layers between BN and target carry values without the affine.
        for name in (fold.target,) if fold.kind == "backward" else fold.through:
            matching.pop(name, None)
    outputs = [new[id(tensor)] for tensor in model.outputs]
    folded = keras.Model(new[id(model.inputs[0])], outputs[0], name=model.name)
    return FoldedModel(folded, folds, matching)


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


@dataclass(frozen=True)
class Parity:
    """Logit agreement between a reference and a candidate, over every batch size run."""

    images: int
    batch_sizes: tuple[int, ...]
    max_abs_logit_diff: float
    top1_agreement: float
    max_abs_logit: float = 0.0
    within_tolerance: bool = True  # every logit within MAX_ABS_LOGIT_DIFF + REL_LOGIT_DIFF·|logit|

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.top1_agreement == 1.0

    @classmethod
    def of(
        cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], images: int, batch_sizes: Sequence[int]
    ) -> Parity:
        """Parity over (reference, candidate) logit pairs, one pair per batch size."""
        worst, largest, agreement, within = 0.0, 0.0, 1.0, True
        for expected, got in pairs:
            expected, got = expected.astype(np.float64), got.astype(np.float64)
            diff = np.abs(got - expected)
            worst = max(worst, float(diff.max()))
            largest = max(largest, float(np.abs(expected).max()))
            within &= bool(np.all(diff <= MAX_ABS_LOGIT_DIFF + REL_LOGIT_DIFF * np.abs(expected)))
            agreement = min(agreement, float(np.mean(got.argmax(1) == expected.argmax(1))))
        return cls(images, tuple(batch_sizes), worst, agreement, largest, within)


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
    affine_names = [f"{f.layer}_affine" for f in folded.folds if f.kind == "affine"]
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


# --------------------------------------------------------------------------- SavedModel


def save_inference_savedmodel(model: keras.Model, path: Path) -> None:
    """serving_default: uint8 `images` [-1, H, W, C] → float32 `logits`, `probabilities`."""
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.uint8, name="images")

    def serve(images):
        logits = model(images, training=False)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SERVING_SIGNATURE, fn=serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def make_readable(path: Path) -> None:
    # mkdtemp and NamedTemporaryFile create owner-only files; apply the umask as open() would.
    mask = os.umask(0)
    os.umask(mask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def _replace_dir(staging: Path, final: Path) -> None:
    """Moves `staging` to `final`, replacing a previous `final` only once the new one exists."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class FoldReport:
    run_dir: Path
    model: str
    savedmodel: Path
    folds: tuple[BatchNormFold, ...]
    parity: Parity
    test_accuracy: float  # folded model, full test split
    test_images: int
    layers_before: int
    layers_after: int
    bn_ops_before: int  # BN ops found on the trained model's inference graph

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "savedmodel": self.savedmodel.name,
            "layers_before": self.layers_before,
            "layers_after": self.layers_after,
            "batchnorm_ops_before": self.bn_ops_before,
            "batchnorm_ops_after": 0,
            "batchnorm": [asdict(fold) for fold in self.folds],
            "parity": {**asdict(self.parity), "limit": PARITY_LIMIT},
            "test_accuracy": self.test_accuracy,
            "test_images": self.test_images,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def load_test_split(run_dir: Path, data_dir: Path | None = None, train: bool = False) -> Split:
    """The run's real test images (or training images, for calibration)."""
    info = load_run_info(run_dir)
    if data_dir is None and info.extra.get("data_dir"):
        data_dir = Path(info.extra["data_dir"])
    synthetic = (
        {"synthetic_size": int(info.extra["synthetic_size"])} if info.extra.get("synthetic_size") else {}
    )
    dataset = load_dataset(
        info.dataset, data_dir=data_dir, synthetic_shape=tuple(info.input_shape), seed=info.seed, **synthetic
    )
    return dataset.train if train else dataset.test


def update_report(run_dir: Path, section: str, content: dict, key: str | None = None) -> None:
    """Writes one section of RUN/export_report.json, keeping the others (atomic replace)."""
    path = run_dir / REPORT_FILE
    try:
        report = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        report = {}
    if key is None:
        report[section] = content
    else:
        report.setdefault(section, {})[key] = content
    with tempfile.NamedTemporaryFile("w", dir=run_dir, suffix=".tmp", delete=False) as handle:
        handle.write(json.dumps(report, indent=2) + "\n")
    make_readable(Path(handle.name))
    Path(handle.name).replace(path)


def fold_run(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    parity_images: int = PARITY_IMAGES,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    print_table: bool = True,
) -> FoldReport:
    """Folds RUN/model.keras into RUN/inference.savedmodel and writes RUN/export_report.json.

    Verifies on `parity_images` real test images (all when fewer) at each batch size and
    raises FoldError (a CnnserveError) naming the layer when the folded model disagrees.
    """
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    try:
        original = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
    except (ValueError, TypeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise FoldError(
            f"cannot load {run_dir / MODEL_FILE} ({first_line}); retrain with 'cnnserve train'"
        ) from None
    folded = fold_model(original)
    test = load_test_split(run_dir, data_dir)
    images = test.images[:parity_images]
    parity = verify_fold(folded, original, images, batch_sizes)
    logits = run_batched(keras_predictor(folded.model), test.images, 256)
    accuracy = float(np.mean(logits.argmax(1) == test.labels))
    bn_names = [fold.layer for fold in folded.folds]
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDED_DIR}.", dir=run_dir))
    try:
        save_inference_savedmodel(folded.model, staging / "model")
        make_readable(staging / "model")
        _replace_dir(staging / "model", run_dir / FOLDED_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = FoldReport(
        run_dir=run_dir,
        model=info.model,
        savedmodel=run_dir / FOLDED_DIR,
        folds=tuple(folded.folds),
        parity=parity,
        test_accuracy=accuracy,
        test_images=len(test),
        layers_before=len(original.layers),
        layers_after=len(folded.model.layers),
        bn_ops_before=len(batchnorm_arithmetic(original, bn_names)),
    )
    update_report(run_dir, "fold", report.to_dict())
    if print_table:
        print_fold_table(report)
    return report


def print_fold_table(report: FoldReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BatchNorm folding: {report.model} ({report.run_dir})")
    for column in ("BatchNorm", "ε", "destination", "why"):
        table.add_column(column, overflow="fold")
    for fold in report.folds:
        table.add_row(fold.layer, f"{fold.epsilon:g}", fold.destination, fold.reason)
    if not report.folds:
        table.add_row("(none)", "", "nothing to fold", "the model has no BatchNormalization")
    console = Console()
    console.print(table)
    parity = report.parity
    console.print(
        f"layers {report.layers_before} → {report.layers_after}; BatchNorm ops on the graph "
        f"{report.bn_ops_before} → 0; parity on {parity.images} test images, batch sizes "
        f"{', '.join(map(str, parity.batch_sizes))}: max |Δlogit| "
        f"{parity.max_abs_logit_diff:.2e} (limit {PARITY_LIMIT}), top-1 agreement "
        f"{parity.top1_agreement:.2%}; folded test accuracy {report.test_accuracy:.4f}; "
        f"wrote {report.savedmodel}"
    )
