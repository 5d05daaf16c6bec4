"""`cnnserve export --version-policy`: written to config.json; a re-export keeps the model's policy."""

from __future__ import annotations

import json

from cnnserve.cli import main
from cnnserve.contracts.model_repository import ModelConfig, VersionPolicy
from cnnserve.export.pipeline import export_run


def test_the_policy_is_written_and_kept_by_later_exports(zoo_runs, zoo_sources, tmp_path) -> None:
    run, source = zoo_runs["mnist_cnn"], zoo_sources["mnist_cnn"]
    first = export_run(
        run, "onnx", repository=tmp_path, source=source, version_policy=VersionPolicy.parse("latest:2")
    )
    model_dir = first.path.parent.parent
    raw = json.loads((model_dir / "config.json").read_text())
    assert raw["version_policy"] == {"latest": {"num_versions": 2}}
    export_run(run, "onnx", repository=tmp_path, source=source)  # version 2, no policy given
    assert ModelConfig.load(model_dir).version_policy == VersionPolicy("latest", num_versions=2)
    export_run(run, "onnx", repository=tmp_path, source=source, version_policy=VersionPolicy("all"))
    assert json.loads((model_dir / "config.json").read_text())["version_policy"] == {"all": {}}
    fresh = export_run(run, "onnx", repository=tmp_path / "other", source=source)
    assert ModelConfig.load(fresh.path.parent.parent).version_policy == VersionPolicy()  # latest 1


def test_a_bad_policy_is_one_line(zoo_runs, tmp_path, capsys) -> None:
    argv = ["export", str(zoo_runs["mnist_cnn"]), "--format", "onnx", "--repository", str(tmp_path)]
    assert main([*argv, "--version-policy", "newest"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnserve export: error: version policy: expected latest[:N], all or specific:")
    assert error.endswith("received 'newest'") and "\n" not in error
