"""The `exports` section of RUN/export_report.json: one entry per exported model version, and its
one writer (`record_export`).

An entry is identified by where it was written (repository, model name, version): exporting
the run into a scratch repository adds an entry beside the real one instead of replacing it,
and re-exporting one version (`--overwrite`) replaces its entry. The `fold` section belongs to
`cnnserve fold` (training); both go through `contracts.run_dir.update_report`, which locks the
file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cnnserve.contracts.parity import Parity
from cnnserve.contracts.run_dir import EXPORTS_SECTION, update_report

SECTION = EXPORTS_SECTION
ExportFormat = Literal["onnx", "savedmodel", "tflite"]


class FormatExport(Protocol):
    """What each exporter returns (`OnnxExport`, `TfliteExport`, `SavedModelExport`): the
    measured facts a report shows, and `to_dict`, the format's part of the written entry."""

    @property
    def parity(self) -> Parity: ...  # the written file against the folded SavedModel
    @property
    def test_accuracy(self) -> float: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def float_test_accuracy(self) -> float | None: ...  # quantized: the float model's
    @property
    def accuracy_drop_points(self) -> float | None: ...
    @property
    def nodes(self) -> tuple[int, int] | None: ...  # ONNX: graph nodes before, after clean-up
    @property
    def int8_ops(self) -> tuple[str, ...]: ...  # one op type per node running in int8
    @property
    def float_ops(self) -> tuple[str, ...]: ...  # quantized: arithmetic left in float32

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class ExportReport:
    """One entry of the `exports` section: what was exported where, and what it measured."""

    format: ExportFormat
    quantize: str | None  # as asked (the format's own entry may name it more precisely)
    export: FormatExport
    repository: str  # resolved path
    name: str
    version: int
    created: str  # ISO 8601, UTC

    @property
    def parity(self) -> Parity:
        return self.export.parity

    @property
    def test_accuracy(self) -> float:
        return self.export.test_accuracy

    def to_dict(self) -> dict:
        """The entry as written: the format's fields between the identity and the slot."""
        return {"format": self.format, "quantize": self.quantize, **self.export.to_dict(),
                "repository": self.repository, "name": self.name, "version": self.version,
                "created": self.created}  # fmt: skip


@dataclass(frozen=True)
class ExportSlot:
    repository: str  # resolved path
    name: str
    version: int

    @classmethod
    def of(cls, entry: dict) -> ExportSlot | None:
        try:
            return cls(str(entry["repository"]), str(entry["name"]), int(entry["version"]))
        except (KeyError, TypeError, ValueError):
            return None


def merge_exports(section: object, entry: dict) -> list[dict]:
    """`section` with `entry` added, replacing the one entry for the same slot.

    Reads the older layout too (a dict keyed by format, one entry per format), whose entries
    already carry repository, name and version."""
    if isinstance(section, dict):
        pairs = [(key.split("_")[0], value) for key, value in section.items()]
        old = [{"format": fmt, **value} for fmt, value in pairs if isinstance(value, dict)]
    else:
        old = [value for value in section if isinstance(value, dict)] if isinstance(section, list) else []
    slot = ExportSlot.of(entry)
    kept = [value for value in old if ExportSlot.of(value) != slot]
    return [*kept, entry]


def record_export(run_dir: Path, report: ExportReport) -> None:
    entry = report.to_dict()
    update_report(run_dir, SECTION, merge=lambda section: merge_exports(section, entry))


def find_exports(report: dict, **match: object) -> list[dict]:
    """Entries of a loaded report whose fields equal `match` (e.g. `format="onnx"`)."""
    section = report.get(SECTION)
    entries = section if isinstance(section, list) else []
    return [e for e in entries if all(e.get(key) == value for key, value in match.items())]
