"""The line `cnnserve train` ends with: the run's accuracy beside the tutorial's figures."""

from __future__ import annotations

from cnnserve.training.models import ZOO
from cnnserve.training.tutorial_figures import FIGURES, comparison


def test_every_zoo_model_has_its_tutorial_figure():
    assert set(FIGURES) == set(ZOO)
    for name, figures in FIGURES.items():
        assert all(f.dataset == ZOO[name].dataset for f in figures), name


def test_same_dataset_is_compared_directly():
    line = comparison("inception_bn", "fashion_mnist", 0.8912, 5, 540)
    assert line.startswith("inception_bn reached 89.12% test accuracy on fashion_mnist (5 epoch(s), 540")
    assert "the tutorial: 70.2% test after epoch 1; 86.0% test after epoch 5" in line


def test_other_dataset_says_so_and_names_the_figures_for_this_dataset():
    line = comparison("mnist_cnn", "fashion_mnist", 0.8767, 2, 1720)
    assert "its tutorial gave no fashion_mnist figure, only 98.8% test on mnist" in line
    assert "on fashion_mnist the tutorials report inception_bn 70.2% after epoch 1" in line
