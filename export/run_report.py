"""The `exports` section of RUN/export_report.json: one entry per exported model version.

An entry is identified by where it was written (repository, model name, version): exporting
the run into a scratch repository adds an entry beside the real one instead of replacing it,
and re-exporting one version (`--overwrite`) replaces its entry. The `fold` section belongs to
`cnnserve fold`; both go through `contracts.run_dir.update_report`, which locks the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SECTION = "exports"


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


def record_export(run_dir: Path, entry: dict) -> None:
    from cnnserve.contracts.run_dir import update_report

    update_report(run_dir, SECTION, merge=lambda section: merge_exports(section, entry))


def find_exports(report: dict, **match: object) -> list[dict]:
    """Entries of a loaded report whose fields equal `match` (e.g. `format="onnx"`)."""
    section = report.get(SECTION)
    entries = section if isinstance(section, list) else []
    return [e for e in entries if all(e.get(key) == value for key, value in match.items())]
