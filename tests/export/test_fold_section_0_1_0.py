"""Run directories written by cnnserve 0.1.0 (tests/fixtures/written_by_0_1_0/) load through the
typed run-directory records export reads: the fold section with its BatchNorm entries and
parity, run.json's provenance, and an ExportSource built from the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cnnserve.contracts.run_dir import (
    MODEL_FILE,
    REPORT_FILE,
    BatchNormFold,
    FoldKind,
    FoldSection,
    RunProvenance,
    load_run_info,
    read_fold_section,
)
from cnnserve.export.source import ExportSource
from cnnserve.training.api import load_split

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "written_by_0_1_0"


def _copy(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    (run / MODEL_FILE).write_bytes(b"")  # load_run_info checks that the run finished
    return run


def test_fold_section_with_batchnorm_loads_typed_and_writes_back_unchanged() -> None:
    section = read_fold_section(FIXTURES / "run_with_batchnorm")
    assert isinstance(section, FoldSection)
    assert (section.model, section.savedmodel) == ("cs231n_complex", "inference.savedmodel")
    assert (section.layers_before, section.layers_after) == (8, 7)
    assert (section.batchnorm_ops_before, section.batchnorm_ops_after) == (16, 0)
    assert section.batchnorm == (
        BatchNormFold(
            layer="conv1_bn",
            kind=FoldKind.FORWARD,
            destination="forward into fc1 through pool1, flatten",
            reason="conv1 has a relu activation; affine commutes with pool1, flatten",
            epsilon=0.001,
            target="fc1",
            through=("pool1", "flatten"),
        ),
    )
    parity = section.parity
    assert parity.ok and (parity.images, parity.batch_sizes) == (64, (1, 256))
    assert parity.max_abs_logit_diff == pytest.approx(4.57763671875e-05)
    assert parity.max_abs_logit == pytest.approx(207.7097625732422)
    assert section.parity_limit == "0.0001 + 1e-05·|logit|"
    assert (section.test_accuracy, section.test_images) == (0.75, 64)
    written = json.loads((FIXTURES / "run_with_batchnorm" / REPORT_FILE).read_text())["fold"]
    assert json.dumps(section.to_dict(), indent=2) == json.dumps(written, indent=2)


def test_fold_section_without_batchnorm_and_run_provenance(tmp_path: Path) -> None:
    run = _copy("run", tmp_path)
    section = read_fold_section(run)
    assert section is not None and section.batchnorm == () and section.model == "mnist_cnn"
    assert section.parity.max_abs_logit_diff == 0.0 and section.parity.images == 128
    info = load_run_info(run)
    assert info.provenance == RunProvenance(
        data_dir=None, val_size=51, synthetic_size=512, train_size=461, distribute="none"
    )
    before = (run / "run.json").read_text()
    info.save(run)
    assert (run / "run.json").read_text() == before  # run.json's keys and order unchanged


def test_export_source_from_a_0_1_0_run(tmp_path: Path) -> None:
    run = _copy("run", tmp_path)
    source = ExportSource.from_run(run)
    assert source.fold == read_fold_section(run)
    assert source.test_accuracy == pytest.approx(0.171875)  # the fold's record, nothing run
    # The run's provenance (synthetic dataset, --synthetic-size 512) gives back its test split.
    test = load_split(run, "test")
    assert len(test) == source.fold.test_images == 128
    assert test.images.shape[1:] == (28, 28, 1)
    assert len(load_split(run, "train")) == 461


def test_damaged_fold_section_reads_as_missing(tmp_path: Path) -> None:
    run = _copy("run_with_batchnorm", tmp_path)
    report = json.loads((run / REPORT_FILE).read_text())
    report["fold"]["batchnorm"][0]["kind"] = "sideways"
    (run / REPORT_FILE).write_text(json.dumps(report))
    assert read_fold_section(run) is None  # load_source folds the run again
