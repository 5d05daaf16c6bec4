"""A run's images again, for the stages after training: the real test split the run was
measured on (fold and export verify on it) and its training split (int8 calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cnnserve.contracts.run_dir import load_run_info
from cnnserve.training.data import Dataset, Split, load_dataset

SplitName = Literal["test", "train"]


def load_split(run_dir: Path, split: SplitName = "test", data_dir: Path | None = None) -> Split:
    """The run's `split`, from the dataset (and --data-dir, --synthetic-size) it was trained on.

    `data_dir` overrides the folder run.json recorded, for a run moved to another machine."""
    dataset = _run_dataset(Path(run_dir), data_dir)
    return dataset.train if split == "train" else dataset.test


def _run_dataset(run_dir: Path, data_dir: Path | None) -> Dataset:
    info = load_run_info(run_dir)
    provenance = info.provenance
    if data_dir is None and provenance is not None and provenance.data_dir:
        data_dir = Path(provenance.data_dir)
    synthetic = {}
    if provenance is not None and provenance.synthetic_size:
        synthetic["synthetic_size"] = provenance.synthetic_size
    return load_dataset(
        info.dataset, data_dir=data_dir, synthetic_shape=tuple(info.input_shape), seed=info.seed, **synthetic
    )
