"""Checkpoints and `cnnserve train --resume`: a run killed mid-epoch ends as if never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cnnserve.cli import main
from cnnserve.training.checkpoints import latest_checkpoint
from cnnserve.training.data import Split
from cnnserve.training.loop import Segment, plan_segments
from cnnserve.training.pipeline import training_pipeline
from tests.child_processes import module_command
from tests.training.small_run import SMALL_RUN, STEPS_PER_EPOCH, TOTAL_STEPS, needs_fashion_mnist

KILL_AFTER_STEP = 100  # in the middle of epoch 2 (steps 64–126)


def test_segments_finish_the_interrupted_epoch_first():
    assert plan_segments(63, 3, 189, 0) == [Segment(0, 3, 63, 0)]
    assert plan_segments(63, 3, 189, 100) == [Segment(1, 2, 26, 100), Segment(2, 3, 63, 126)]
    assert plan_segments(63, 3, 189, 126) == [Segment(2, 3, 63, 126)]
    # --steps 150: the last epoch is short, and a resume inside it stops at 150 too.
    assert plan_segments(63, 3, 150, 130) == [Segment(2, 3, 20, 130)]
    assert plan_segments(63, 3, 189, 189) == []


def test_stream_resumed_at_a_step_is_the_uninterrupted_stream():
    split = Split(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100))
    whole, steps_per_epoch = training_pipeline(split, 32, seed=7)
    assert steps_per_epoch == 4
    expected = [labels.numpy() for _, labels in whole.take(12)]
    resumed, _ = training_pipeline(split, 32, seed=7, start_step=5)
    for want, (images, labels) in zip(expected[5:], resumed.take(7), strict=True):
        np.testing.assert_array_equal(labels.numpy(), want)
        np.testing.assert_array_equal(images.numpy()[:, 0, 0, 0], want)
    # Each epoch is a full permutation of the images, different from the last.
    first_epoch = np.concatenate(expected)[:100]
    second_epoch = np.concatenate(expected)[100:200]
    assert sorted(first_epoch) == list(range(100)) and sorted(second_epoch) == list(range(100))
    assert not np.array_equal(first_epoch, second_epoch)


def _kill_mid_epoch(out: Path) -> None:
    """Starts the small run as a real process and SIGKILLs it once step KILL_AFTER_STEP is saved."""
    arguments = [*SMALL_RUN, "--out", str(out), "--checkpoint-every-steps", "25"]
    command = module_command("cnnserve", "train", *arguments)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / f"step-{KILL_AFTER_STEP:09d}").is_dir():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_reference_run: Path) -> tuple[Path, Path]:
    """The same small run uninterrupted (in-process) and killed mid-epoch then resumed."""
    killed = tmp_path_factory.mktemp("resume") / "killed"
    _kill_mid_epoch(killed)
    _, state = latest_checkpoint(killed)
    assert KILL_AFTER_STEP <= state.step < 2 * STEPS_PER_EPOCH, "killed outside epoch 2"
    assert state.step % STEPS_PER_EPOCH != 0 and state.epochs_done == 1
    assert not (killed / "metrics.json").exists()
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    return small_reference_run, killed


@needs_fashion_mnist
@pytest.mark.slow
def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(runs):
    reference, resumed = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert resumed["steps"] == reference["steps"] == TOTAL_STEPS
    assert resumed["epochs"] == 3 and len(resumed["history"]["val_accuracy"]) == 3
    assert reference["test_accuracy"] > 0.7  # it really learned (chance is 0.1)
    assert abs(resumed["test_accuracy"] - reference["test_accuracy"]) <= 0.005
    # Epochs finished before the kill were recorded, not lost; two processes agree to within
    # TensorFlow's thread-order noise, not to the bit.
    assert abs(resumed["history"]["val_accuracy"][0] - reference["history"]["val_accuracy"][0]) <= 0.005


@needs_fashion_mnist
@pytest.mark.slow
def test_resumed_run_writes_every_output(runs):
    _, resumed = runs
    for name in ("model.keras", "run.json", "metrics.json", "history.png", "confusion_matrix.png",
                 "errors.png", "export_report.json", "inference.savedmodel/saved_model.pb"):  # fmt: skip
        assert (resumed / name).is_file(), name
    # The last two checkpoints are kept (step 175 and the end of training), nothing half-written.
    names = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert names == [f"step-{175:09d}", f"step-{TOTAL_STEPS:09d}"]
    assert latest_checkpoint(resumed)[1].step == TOTAL_STEPS


def test_resume_without_checkpoint_is_a_one_line_error(tmp_path: Path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert f"{tmp_path} has no train_config.json" in capsys.readouterr().err


def test_train_needs_model_and_out_or_resume(capsys):
    assert main(["train", "--model", "mnist_cnn"]) == 2
    assert "give --model and --out (or --resume RUN" in capsys.readouterr().err
