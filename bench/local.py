"""`cnnserve bench local`: every (model, backend, batch size) point, measured in this process.

Order of work: matmul peak first (in a child process, before any runtime spins up threads),
then per model: artefacts, FLOP count, every backend opened, and `rounds` rounds that each
measure every backend at every batch size in turn. Interleaving is what makes the backends
comparable on a machine whose speed drifts from minute to minute (a shared one does): a slow
spell lands on every backend's samples alike instead of on whichever ran during it. A backend
that cannot run here (missing artefact, no CUDA) is reported as skipped with the reason,
not silently dropped; if nothing at all can run, that is an error.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cnnserve.bench import artifacts
from cnnserve.bench.backends import BackendUnavailable, open_backend
from cnnserve.bench.options import RuntimeOptions
from cnnserve.bench.peak import DEFAULT_REPEATS, DEFAULT_SIZE, MatmulPeak, measure_peak
from cnnserve.bench.records import LocalRecord, latency_fields, throughput_fields
from cnnserve.bench.stats import summarize_ns
from cnnserve.bench.system import SystemInfo, collect
from cnnserve.bench.timing import RepeatPolicy, measure
from cnnserve.contracts.errors import CnnserveError

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalPlan:
    models: tuple[str, ...]
    variants: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    repository: Path | None  # None: --synthetic
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    policy: RepeatPolicy = field(default_factory=RepeatPolicy)
    peak_size: int = DEFAULT_SIZE
    peak_repeats: int = DEFAULT_REPEATS
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise CnnserveError(f"--rounds must be >= 1, received {self.rounds}")
        if not self.models:
            raise CnnserveError("--model is empty; name a model (or 'all' with --synthetic)")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise CnnserveError(f"batch sizes must be positive integers, received {list(self.batch_sizes)}")


@dataclass(frozen=True)
class Skipped:
    model: str
    backend: str
    reason: str


@dataclass
class LocalResult:
    records: list[LocalRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    peak: MatmulPeak | None = None
    system: SystemInfo | None = None


class Progress:
    """What the runner reports; the CLI draws a rich progress bar from it, tests ignore it."""

    def start(self, total: int) -> None: ...

    def step(self, description: str) -> None: ...

    def advance(self) -> None: ...


def images_for(batch_size: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch_size, *shape), dtype=np.uint8)


def measure_point(backend, batch_size: int, shape: tuple[int, ...], policy: RepeatPolicy) -> np.ndarray:
    """Per-call ns for one batch size; checks once that the backend returned one row per image."""
    images = images_for(batch_size, shape)
    backend.prepare(batch_size)
    rows = np.asarray(backend.run(images)).shape[0]
    if rows != batch_size:
        raise CnnserveError(f"{backend.variant} returned {rows} rows for a batch of {batch_size}")
    return measure(lambda: backend.run(images), policy)


def _artifacts(plan: LocalPlan, model: str, workdir: Path) -> artifacts.ModelArtifacts:
    if plan.repository is None:
        return artifacts.synthetic(model, plan.variants, workdir / model)
    return artifacts.from_repository(plan.repository, model, plan.variants)


def run_local(plan: LocalPlan, progress: Progress | None = None) -> LocalResult:
    progress = progress or Progress()
    result = LocalResult(system=collect())
    progress.step(f"matmul peak ({plan.options.threads} threads)")
    result.peak = measure_peak(plan.options.threads, plan.peak_size, plan.peak_repeats)
    system = {**asdict(result.system), "matmul_peak": asdict(result.peak)}
    progress.start(len(plan.models) * len(plan.variants) * len(plan.batch_sizes) * plan.rounds)
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-") as workdir:
        for model in plan.models:
            progress.step(f"{model}: preparing models")
            found = _artifacts(plan, model, Path(workdir))
            flops = artifacts.flops_per_image(found.zoo_model)
            backends = _open_backends(plan, model, found, result, progress)
            samples: dict[tuple[str, int], list[np.ndarray]] = {}
            for round_index in range(plan.rounds):
                policy = plan.policy.for_round(plan.rounds, first=round_index == 0)
                for variant, backend in backends.items():
                    for batch_size in plan.batch_sizes:
                        where = f"round {round_index + 1}/{plan.rounds}"
                        progress.step(f"{model} · {variant} · batch {batch_size} · {where}")
                        point = measure_point(backend, batch_size, found.input_shape, policy)
                        samples.setdefault((variant, batch_size), []).append(point)
                        progress.advance()
            for variant, backend in backends.items():
                for batch_size in plan.batch_sizes:
                    measured = np.concatenate(samples[(variant, batch_size)])
                    result.records.append(
                        _record(found.model, backend, batch_size, measured, flops, result.peak, system)
                    )
            backends.clear()  # free their threads and memory before the next model
    if not result.records:
        reasons = "; ".join(f"{s.model}/{s.backend}: {s.reason}" for s in result.skipped)
        raise CnnserveError(f"nothing could be measured: {reasons}")
    return result


def _open_backends(plan: LocalPlan, model: str, found, result: LocalResult, progress: Progress) -> dict:
    """Every variant that can run here, by name; the others are recorded as skipped, with why."""
    backends = {}
    for variant in plan.variants:
        path = found.files.get(variant)
        if path is None:
            reason = found.missing.get(variant, "not available")
        else:
            try:
                backends[variant] = open_backend(variant, path, plan.options)
                continue
            except BackendUnavailable as error:
                reason = str(error)
        result.skipped.append(Skipped(model, variant, reason))
        for _ in range(len(plan.batch_sizes) * plan.rounds):
            progress.advance()
    return backends


def _record(model, backend, batch_size, samples, flops, peak, system) -> LocalRecord:
    summary = summarize_ns(samples)
    images_per_s = summary.per_second(batch_size)
    latency = latency_fields(summary)
    return LocalRecord(
        model=model,
        backend=backend.variant,
        device=backend.device,
        engine=backend.engine,
        batch_size=batch_size,
        runs=summary.count,
        min_ms=summary.min_ms,
        images_per_s=images_per_s,
        flops_per_image=flops,
        peak_gflops=peak.gflops if peak else None,
        settings=backend.settings(),
        system=system,
        **latency,
        **throughput_fields(images_per_s, flops, peak.gflops if peak else None, backend.device == "cpu"),
    )
