"""Evaluation of a trained model: the metrics in metrics.json and the pictures the tutorials show."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from cnnserve.training.data import Split


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]
    predictions: np.ndarray

    def summary(self) -> dict:
        fields = asdict(self)
        del fields["predictions"]
        return fields


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    predictions = logits.argmax(axis=1)
    num_classes = len(class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(class_names)
    }
    return Evaluation(
        accuracy=float((predictions == labels).mean()),
        loss=softmax_cross_entropy(logits, labels),
        per_class_accuracy=per_class,
        confusion_matrix=confusion.tolist(),
        predictions=predictions,
    )


def plot_confusion_matrix(evaluation: Evaluation, class_names: tuple[str, ...], path: Path) -> None:
    matrix = np.asarray(evaluation.confusion_matrix)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (test accuracy {evaluation.accuracy:.2%})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_errors(
    evaluation: Evaluation, test: Split, class_names: tuple[str, ...], path: Path, count: int = 9
) -> None:
    """A grid of misclassified test images with true and predicted labels, as the MNIST tutorial."""
    wrong = np.flatnonzero(evaluation.predictions != test.labels)[:count]
    side = int(np.ceil(np.sqrt(max(count, 1))))
    fig, axes = plt.subplots(side, side, figsize=(2.2 * side, 2.4 * side))
    for ax, index in zip(axes.flat, [*wrong, *[None] * (side * side - len(wrong))], strict=True):
        ax.axis("off")
        if index is None:
            continue
        image = test.images[index]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="binary")
        true_name = class_names[test.labels[index]]
        predicted = class_names[evaluation.predictions[index]]
        ax.set_title(f"true: {true_name}\npred: {predicted}", fontsize=8)
    fig.suptitle(f"{len(wrong)} of {int((evaluation.predictions != test.labels).sum())} errors")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(history: dict[str, list[float]], path: Path, validation_label: str = "validation") -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + key)
            if values:
                ax.plot(epochs, values, style, label=validation_label if prefix else "training")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grid(count: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / cols)), cols


def plot_filters(kernel: np.ndarray, layer_name: str, path: Path) -> None:
    """The first conv layer's filters (kh, kw, in, out), as the MNIST tutorial shows them."""
    count = kernel.shape[-1]
    rows, cols = _grid(count)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    limit = float(np.abs(kernel).max()) or 1.0
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        weights = kernel[..., index]
        if weights.shape[-1] == 3:
            ax.imshow((weights - weights.min()) / (np.ptp(weights) or 1.0))
        else:
            ax.imshow(weights[..., 0], cmap="seismic", vmin=-limit, vmax=limit)
    fig.suptitle(f"{layer_name} filters")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_feature_maps(maps: np.ndarray, image: np.ndarray, layer_name: str, path: Path) -> None:
    """One test image and the first conv layer's output channels for it."""
    count = maps.shape[-1] + 1
    rows, cols = _grid(count)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index == 0:
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="binary")
            ax.set_title("input", fontsize=7)
        elif index < count:
            ax.imshow(maps[..., index - 1], cmap="binary")
    fig.suptitle(f"{layer_name} outputs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
