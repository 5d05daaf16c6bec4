"""`cnnserve fold`'s console output: where each BatchNorm went, and the parity it kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cnnserve.contracts.parity import PARITY_LIMIT

if TYPE_CHECKING:
    from cnnserve.training.fold_run import FoldReport


def print_fold_table(report: FoldReport) -> None:
    table = Table(title=f"BatchNorm folding: {report.model} ({report.run_dir})")
    for column in ("BatchNorm", "ε", "destination", "why"):
        table.add_column(column, overflow="fold")
    for fold in report.folds:
        table.add_row(fold.layer, f"{fold.epsilon:g}", fold.destination, fold.reason)
    if not report.folds:
        table.add_row("(none)", "", "nothing to fold", "the model has no BatchNormalization")
    console = Console()
    console.print(table)
    parity = report.parity
    console.print(
        f"layers {report.layers_before} → {report.layers_after}; BatchNorm ops on the graph "
        f"{report.bn_ops_before} → 0; parity on {parity.images} test images, batch sizes "
        f"{', '.join(map(str, parity.batch_sizes))}: max |Δlogit| "
        f"{parity.max_abs_logit_diff:.2e} (limit {PARITY_LIMIT}), top-1 agreement "
        f"{parity.top1_agreement:.2%}; folded test accuracy {report.test_accuracy:.4f}; "
        f"wrote {report.savedmodel}"
    )
