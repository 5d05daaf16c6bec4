"""The accuracy each source tutorial reported, to print beside what a run reached (SEEDS.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TutorialFigure:
    dataset: str
    accuracy: float
    when: str  # how long the tutorial had trained for that figure
    split: str = "test"


FIGURES: dict[str, tuple[TutorialFigure, ...]] = {
    "mnist_cnn": (TutorialFigure("mnist", 0.988, "after 10,000 iterations of batch 64"),),
    "cs231n_simple": (TutorialFigure("cifar10", 0.37, "after 1 epoch", "validation"),),
    "cs231n_complex": (TutorialFigure("cifar10", 0.54, "after 1 epoch", "validation"),),
    "cs231n_custom": (TutorialFigure("cifar10", 0.696, "after ~7 epochs"),),
    "cifar10_convnet": (TutorialFigure("cifar10", 0.73, "after 3,000 steps of batch 128"),),
    "alexnet_bn": (TutorialFigure("cifar10", 0.737, "after 10,000 steps of batch 20"),),
    "inception_bn": (
        TutorialFigure("fashion_mnist", 0.702, "after epoch 1"),
        TutorialFigure("fashion_mnist", 0.860, "after epoch 5"),
        TutorialFigure("fashion_mnist", 0.905, "at its best (epoch 16 of 20)"),
    ),
}


def comparison(model: str, dataset: str, accuracy: float, epochs: int, steps: int) -> str:
    """One line: this run's test accuracy beside the tutorial's figure(s) for the model."""
    figures = FIGURES.get(model, ())
    reached = f"{model} reached {accuracy:.2%} test accuracy on {dataset} ({epochs} epoch(s), {steps} steps)"
    same = [f for f in figures if f.dataset == dataset]
    if same:
        told = "; ".join(f"{f.accuracy:.1%} {f.split} {f.when}" for f in same)
        return f"{reached}; the tutorial: {told}"
    line = reached
    if figures:
        other = "; ".join(f"{f.accuracy:.1%} {f.split} on {f.dataset} {f.when}" for f in figures)
        line = f"{reached}; its tutorial gave no {dataset} figure, only {other}"
    neighbours = [
        f"{name} {f.accuracy:.1%} {f.when}"
        for name, told in FIGURES.items()
        for f in told
        if f.dataset == dataset and name != model
    ]
    if neighbours:
        line += f"; on {dataset} the tutorials report " + ", ".join(neighbours)
    return line
