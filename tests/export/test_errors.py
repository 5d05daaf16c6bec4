"""User errors: one line from the CLI, exit 2, and nothing half-written in the repository."""

from __future__ import annotations

import keras
import pytest

from cnnserve.cli import main
from cnnserve.contracts.errors import CnnserveError
from cnnserve.export import pipeline
from cnnserve.export.pipeline import export_run


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_missing_run_and_not_a_run(tmp_path, capsys):
    repo = tmp_path / "models"
    err = _one_line_error(capsys, ["export", str(tmp_path / "nope"), "--format", "onnx",
                                   "--repository", str(repo)])  # fmt: skip
    assert "does not exist" in err and "cnnserve train" in err
    err = _one_line_error(capsys, ["export", str(tmp_path), "--format", "onnx",
                                   "--repository", str(repo)])  # fmt: skip
    assert "not a cnnserve run" in err
    assert not repo.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "pdf"], "unsupported format 'pdf'; choose one of savedmodel, onnx, tflite"),
        (["--format", "tflite", "--quantize", "int4"], "unsupported quantization 'int4'"),
        (
            ["--format", "savedmodel", "--quantize", "int8"],
            "--quantize applies to --format onnx (int8) and tflite",
        ),
        (["--format", "onnx", "--quantize", "float16"], "--format onnx quantizes to int8 only"),
        (["--format", "onnx", "--version", "0"], "--version must be a positive integer"),
    ],
)
def test_bad_options(argv, message, zoo_runs, tmp_path, capsys):
    repo = tmp_path / "models"
    err = _one_line_error(capsys, ["export", str(zoo_runs["mnist_cnn"]), "--repository", str(repo), *argv])
    assert message in err
    assert not repo.exists()


def test_existing_version_needs_overwrite_and_leaves_it_intact(zoo_runs, zoo_sources, tmp_path, capsys):
    run, repo = zoo_runs["cs231n_custom"], tmp_path / "models"
    export_run(run, "onnx", repository=repo, source=zoo_sources["cs231n_custom"])
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    err = _one_line_error(capsys, ["export", str(run), "--format", "onnx", "--repository", str(repo),
                                   "--version", "1"])  # fmt: skip
    assert "already exists; pass --overwrite" in err and "next free: 2" in err
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    # --overwrite replaces it in place; without --version the next free number is used.
    again = export_run(run, "onnx", repository=repo, version=1, overwrite=True,
                       source=zoo_sources["cs231n_custom"])  # fmt: skip
    assert again.version == 1
    assert export_run(run, "onnx", repository=repo, source=zoo_sources["cs231n_custom"]).version == 2
    assert _tree(repo) == [
        "cs231n_custom", "cs231n_custom/1", "cs231n_custom/1/model.onnx",
        "cs231n_custom/2", "cs231n_custom/2/model.onnx", "cs231n_custom/config.json",
    ]  # fmt: skip


def test_failure_mid_export_leaves_nothing(zoo_runs, zoo_sources, tmp_path, monkeypatch):
    repo = tmp_path / "models"

    def broken(*args, **kwargs):
        raise CnnserveError("converter exploded")

    monkeypatch.setattr(pipeline, "_export", broken)
    with pytest.raises(CnnserveError, match="converter exploded"):
        export_run(zoo_runs["mnist_cnn"], "onnx", repository=repo, source=zoo_sources["mnist_cnn"])
    assert _tree(repo) == []


def test_platform_conflict_in_one_model_name(zoo_runs, zoo_sources, tmp_path):
    repo = tmp_path / "models"
    export_run(zoo_runs["mnist_cnn"], "onnx", repository=repo, source=zoo_sources["mnist_cnn"])
    with pytest.raises(CnnserveError, match="export this format under another name with --name"):
        export_run(zoo_runs["mnist_cnn"], "tflite", repository=repo, name="mnist_cnn", version=2)


def test_unknown_layer_is_reported_and_nothing_written(tmp_path, capsys, run_factory):
    images = keras.Input((28, 28, 1), dtype="uint8", name="images")
    x = keras.layers.Rescaling(1 / 255.0)(images)
    x = keras.layers.LayerNormalization(name="odd_norm")(x)
    model = keras.Model(images, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(x)))
    run = run_factory(tmp_path / "run", model, "mnist_cnn", "fashion_mnist")
    repo = tmp_path / "models"
    err = _one_line_error(capsys, ["export", str(run), "--format", "onnx", "--repository", str(repo)])
    assert "'odd_norm' of type LayerNormalization is not known to the folder" in err
    assert _tree(repo) == []


def test_export_cli_prints_parity(zoo_runs, tmp_path, capsys):
    repo = tmp_path / "models"
    argv = ["export", str(zoo_runs["cs231n_simple"]), "--format", "onnx", "--repository", str(repo),
            "--parity-images", "64"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "parity vs folded SavedModel" in out and "ONNX nodes" in out
    assert (repo / "cs231n_simple" / "1" / "model.onnx").is_file()
