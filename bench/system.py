"""What ran the benchmark: CPU, cores, thread settings, library versions, recorded with every result."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from cnnserve.contracts.cpu_limits import available_cores

LIBRARIES = (
    "cnnserve", "numpy", "onnxruntime-gpu", "onnxruntime", "tensorflow-cpu", "tensorflow", "keras",
    "ai-edge-litert", "tf2onnx", "onnx", "grpcio", "tritonclient", "protobuf",
)  # fmt: skip


@dataclass(frozen=True)
class SystemInfo:
    cpu_model: str
    logical_cores: int
    usable_cores: int  # CPU affinity capped by a cgroup quota: what a container or taskset allows
    platform: str
    python: str
    libraries: dict[str, str] = field(default_factory=dict)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores a server here would plan for: CPU affinity, capped by a cgroup CPU quota."""
    return available_cores()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def collect() -> SystemInfo:
    return SystemInfo(
        cpu_model=cpu_model(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable_cores(),
        platform=platform.platform(),
        python=platform.python_version(),
        libraries=library_versions(),
    )
