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
