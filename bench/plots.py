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


def _integer_ticks(axis, values: Sequence[int]) -> None:
    """Log-2 x axis with a labelled tick at each measured value (1, 8, 64, …), not 1.0, 2.0, …."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted(set(values))
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_locator(FixedLocator(ticks))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticklabels([str(t) for t in ticks])


def plot_local(records: Sequence[LocalRecord], path: Path) -> None:
    """One panel per model: p50 latency per batch vs batch size, one line per backend, log-log,
    with the tutorials' batch-64 figures for cs231n_complex as shaded reference bands and the
    batch they were measured at marked. One legend for all panels, where it hides no data."""
    plt = _pyplot()

    models = list(dict.fromkeys(r.model for r in records))
    # One colour per backend in every panel, whichever backends a panel lacks.
    colors = {backend: f"C{i}" for i, backend in enumerate(dict.fromkeys(r.backend for r in records))}
    columns = min(3, len(models))
    rows = math.ceil(len(models) / columns)
    spare = rows * columns - len(models)
    legend_height = 0 if spare else 0.9  # inches below the panels when no panel slot is free
    height = 4.2 * rows + legend_height
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, height), squeeze=False)
    for axis, model in zip(axes.flat, models, strict=False):
        points = [r for r in records if r.model == model]
        for backend in dict.fromkeys(r.backend for r in points):
            line = sorted((r for r in points if r.backend == backend), key=lambda r: r.batch_size)
            axis.plot([r.batch_size for r in line], [r.p50_ms for r in line], marker="o",
                      color=colors[backend], label=f"{backend} ({line[0].device})")  # fmt: skip
        for figure_ref, color in zip(TUTORIAL_FIGURES, FIGURE_COLORS, strict=True):
            label = (
                f"{REFERENCE_MODEL} b{REFERENCE_BATCH_SIZE}, tutorial: {figure_ref.label} "
                f"({figure_ref.low_ms:g}–{figure_ref.high_ms:g} ms)"
            )
            # Edged, so that a band only a few ms wide still shows on a log axis.
            axis.axhspan(figure_ref.low_ms, figure_ref.high_ms, facecolor=color, alpha=0.2, edgecolor=color,
                         linewidth=0.8, label=label)  # fmt: skip
        axis.axvline(REFERENCE_BATCH_SIZE, color="grey", linestyle=":", linewidth=0.8,
                     label=f"batch {REFERENCE_BATCH_SIZE}, where the tutorials measured")  # fmt: skip
        _integer_ticks(axis, [r.batch_size for r in points])
        axis.set_yscale("log")
        top = max(max(r.p50_ms for r in points), max(f.high_ms for f in TUTORIAL_FIGURES))
        axis.set_ylim(top=top * 1.5)
        axis.set_title(model)
        axis.set_xlabel("batch size")
        axis.set_ylabel("p50 latency per batch (ms)")
        axis.grid(True, which="both", alpha=0.3)
    entries: dict[str, object] = {}  # every panel's lines: a backend may be missing from the first
    for axis in list(axes.flat)[: len(models)]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    handles, labels = list(entries.values()), list(entries)
    for axis in list(axes.flat)[len(models) :]:
        axis.set_axis_off()
    if spare:
        list(axes.flat)[len(models)].legend(handles, labels, loc="center", fontsize=9, frameon=False)
        figure.tight_layout()
    else:
        figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_server(records: Sequence[ServerRecord], path: Path) -> None:
    """Throughput (images/s) and p50/p99 latency vs the load level (concurrency, or the offered
    request rate of an open loop), one line per model."""
    plt = _pyplot()

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, model in enumerate(dict.fromkeys(r.model for r in records)):
        line = sorted((r for r in records if r.model == model), key=lambda r: r.level)
        label = f"{model} ({line[0].protocol}, {line[0].images_per_request} img/req)"
        style = {"linestyle": "--" if line[0].noop else "-", "color": f"C{index}"}  # one colour per model
        x = [r.level for r in line]
        left.plot(x, [r.images_per_s for r in line], marker="o", label=label, **style)
        right.plot(x, [r.p50_ms for r in line], marker="o", label=f"{label} p50", **style)
        right.plot(x, [r.p99_ms for r in line], marker="x", alpha=0.5, label=f"{label} p99", **style)
    for axis, ylabel in ((left, "images/s"), (right, "latency per request (ms)")):
        _integer_ticks(axis, [r.level for r in records])
        axis.set_xlabel(
            "offered requests/s (open loop)" if records[0].open_loop else "concurrency (requests in flight)"
        )
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
