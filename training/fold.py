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

from collections.abc import Iterable
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.run_dir import BatchNormFold, FoldKind
from cnnserve.training import layers as cnn_layers
from cnnserve.training.inference_layers import CentralCrop, ChannelAffine

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


class FoldError(CnnserveError):
    """The model cannot be folded, or the folded model does not match the trained one."""


# --------------------------------------------------------------------------- the plan


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
            folds.append(BatchNormFold(bn.name, FoldKind.AFFINE, "kept as affine", why, epsilon))
            continue
        target, why_not_back = _plan_backward(graph, bn)
        if target is not None:
            folds.append(BatchNormFold(bn.name, FoldKind.BACKWARD, f"into {target.name}", why_not_back,
                                       epsilon, target.name))  # fmt: skip
            continue
        target, through, why = _plan_forward(graph, bn, affine)
        if target is not None:
            via = f" through {_names(through)}" if through else ""
            folds.append(BatchNormFold(bn.name, FoldKind.FORWARD, f"forward into {target.name}{via}",
                                       f"{why_not_back}; {why}", epsilon, target.name,
                                       tuple(layer.name for layer in through)))  # fmt: skip
            continue
        folds.append(BatchNormFold(bn.name, FoldKind.AFFINE, "kept as affine",
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
        rewrite = fold_backward if fold.kind is FoldKind.BACKWARD else fold_forward
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
            if fold.kind is FoldKind.AFFINE:
                affine = affines[layer.name]
                clone = ChannelAffine(affine.scale.size, name=f"{layer.name}_affine")
                source = clone(source)
                clone.set_weights([affine.scale.astype(np.float32), affine.offset.astype(np.float32)])
            new[id(output)] = source
            if fold.kind is not FoldKind.FORWARD:
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
        for name in (fold.target,) if fold.kind is FoldKind.BACKWARD else fold.through:
            matching.pop(name, None)
    outputs = [new[id(tensor)] for tensor in model.outputs]
    folded = keras.Model(new[id(model.inputs[0])], outputs[0], name=model.name)
    return FoldedModel(folded, folds, matching)
