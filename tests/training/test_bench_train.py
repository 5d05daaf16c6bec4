"""`cnnserve bench train`: the training-step benchmark runs a real step and reports consistent figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnserve.cli import main


@pytest.mark.slow
def test_bench_train_measures_a_model_against_the_peak(tmp_path: Path, capsys):
    out = tmp_path / "train.json"
    args = ["bench", "train", "--model", "mnist_cnn", "--batch-size", "32", "--min-time-s", "0.5",
            "--peak-size", "256", "--peak-repeats", "2"]  # fmt: skip
    assert main([*args, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    (point,) = record["points"]
    assert record["peak_gflops"] > 0
    assert point["model"] == "mnist_cnn" and point["batch_size"] == 32 and point["xla"] is False
    assert point["forward_flops_per_image"] == 6_726_144  # 2 × multiply-adds of the conv and fc layers
    assert point["examples_per_s"] == pytest.approx(32 * point["steps"] / point["seconds"])
    assert point["gflops"] == pytest.approx(3 * 6_726_144 * point["examples_per_s"] / 1e9)
    assert point["peak_percent"] == pytest.approx(100 * point["gflops"] / record["peak_gflops"])
    assert "matmul peak" in capsys.readouterr().out


def test_bench_train_unknown_model_is_a_one_line_error(capsys):
    assert main(["bench", "train", "--model", "vgg"]) == 2
    assert "unknown model(s) vgg" in capsys.readouterr().err


@pytest.mark.slow
def test_onednn_both_times_each_setting_in_its_own_process(tmp_path: Path):
    """Eigen then oneDNN per model, each as TensorFlow itself reports it, against one given peak."""
    out = tmp_path / "train.json"
    args = ["bench", "train", "--model", "mnist_cnn", "--batch-size", "32", "--min-time-s", "0.2",
            "--onednn", "both", "--peak-gflops", "100"]  # fmt: skip
    assert main([*args, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["peak_gflops"] == 100
    assert [(p["model"], p["onednn"]) for p in record["points"]] == [
        ("mnist_cnn", False),
        ("mnist_cnn", True),
    ]
    for point in record["points"]:
        assert point["batch_size"] == 32 and point["steps"] >= 2
        assert point["peak_percent"] == pytest.approx(point["gflops"])  # of the given 100 GFLOP/s


def test_bench_train_refuses_a_non_positive_peak(capsys):
    assert main(["bench", "train", "--model", "mnist_cnn", "--peak-gflops", "0"]) == 2
    assert "--peak-gflops must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_batchnorm_both_times_keras_and_the_fused_kernel(tmp_path: Path):
    """Keras's BatchNormalization against the zoo's fused one on a model that has BatchNorm; a
    model without any is timed once and says so."""
    out = tmp_path / "train.json"
    args = ["bench", "train", "--model", "cs231n_complex,mnist_cnn", "--batch-size", "16",
            "--min-time-s", "0.2", "--batchnorm", "both", "--peak-gflops", "100"]  # fmt: skip
    assert main([*args, "--json", str(out)]) == 0
    points = json.loads(out.read_text())["points"]
    assert [(p["model"], p["batchnorm"]) for p in points] == [
        ("cs231n_complex", "keras"),
        ("cs231n_complex", "fused"),
        ("mnist_cnn", "none"),
    ]
    flops = {p["forward_flops_per_image"] for p in points[:2]}
    assert len(flops) == 1  # the same network either way


def test_the_keras_variant_has_keras_batchnorm_and_the_same_shapes():
    import keras

    from cnnserve.bench.train_bench import with_keras_batchnorm
    from cnnserve.training.layers import FusedBatchNormalization
    from cnnserve.training.models import build_model

    model = build_model("inception_bn")
    variant = with_keras_batchnorm(model)
    kinds = [type(layer) for layer in variant.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert kinds and set(kinds) == {keras.layers.BatchNormalization}
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in variant.layers)
    assert [w.shape for w in variant.weights] == [w.shape for w in model.weights]
