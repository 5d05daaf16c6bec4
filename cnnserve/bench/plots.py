"""PNG plots (matplotlib, Agg: no display needed): latency vs batch size, throughput/latency vs
concurrency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from cnnserve.bench.records import LocalRecord, ServerRecord
from cnnserve.bench.reference import REFERENCE_BATCH_SIZE, REFERENCE_MODEL, TUTORIAL_FIGURES

FIGURE_COLORS = ("tab:red", "tab:orange", "tab:green")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_local(records: Sequence[LocalRecord], path: Path) -> None:
    """One panel per model: p50 latency per batch vs batch size, one line per backend, log-log,
    with the tutorials' batch-64 figures for cs231n_complex as horizontal reference lines."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    models = list(dict.fromkeys(r.model for r in records))
    columns = min(3, len(models))
    rows = math.ceil(len(models) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for axis, model in zip(axes.flat, models, strict=False):
        points = [r for r in records if r.model == model]
        for backend in dict.fromkeys(r.backend for r in points):
            line = sorted((r for r in points if r.backend == backend), key=lambda r: r.batch_size)
            axis.plot([r.batch_size for r in line], [r.p50_ms for r in line], marker="o",
                      label=f"{backend} ({line[0].device})")  # fmt: skip
        for figure_ref, color in zip(TUTORIAL_FIGURES, FIGURE_COLORS, strict=True):
            for value in (figure_ref.low_ms, figure_ref.high_ms):
                axis.axhline(value, color=color, linestyle="--", linewidth=0.8,
                             label=f"{REFERENCE_MODEL} b{REFERENCE_BATCH_SIZE}: {figure_ref.label}"
                             if value == figure_ref.low_ms else None)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_yscale("log")
        axis.set_title(model)
        axis.set_xlabel("batch size")
        axis.set_ylabel("p50 latency per batch (ms)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(models) :]:
        axis.set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_server(records: Sequence[ServerRecord], path: Path) -> None:
    """Throughput (images/s) and p50/p99 latency vs concurrency, one line per model."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in dict.fromkeys(r.model for r in records):
        line = sorted((r for r in records if r.model == model), key=lambda r: r.concurrency)
        label = f"{model} ({line[0].protocol}, {line[0].images_per_request} img/req)"
        style = "--" if line[0].noop else "-"
        x = [r.concurrency for r in line]
        left.plot(x, [r.images_per_s for r in line], style, marker="o", label=label)
        right.plot(x, [r.p50_ms for r in line], style, marker="o", label=f"{label} p50")
        right.plot(x, [r.p99_ms for r in line], style, marker="x", alpha=0.6, label=f"{label} p99")
    for axis, ylabel in ((left, "images/s"), (right, "latency per request (ms)")):
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
