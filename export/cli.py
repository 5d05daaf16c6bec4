"""`cnnserve export RUN --format ...` (`cnnserve fold` is training's, in `cnnserve.training.cli`).

TensorFlow and the converters are imported inside the handlers, so `cnnserve --help` and the
server never load them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnserve.contracts.parity import PARITY_IMAGES
from cnnserve.training.api import import_tensorflow_quietly

FORMAT_NAMES = ("savedmodel", "onnx", "tflite")
QUANTIZE_NAMES = ("float16", "int8")


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="export a run to ONNX, TFLite or SavedModel in a model repository",
        description="Converts RUN's folded SavedModel, verifies it against the folded model and "
        "writes REPOSITORY/<name>/<version>/model.* plus REPOSITORY/<name>/config.json.",
    )
    export.add_argument("run", type=Path, metavar="RUN", help="run directory from 'cnnserve train'")
    # Validated in the handler, so a bad value is one line that lists the choices.
    export.add_argument("--format", required=True, metavar="{savedmodel,onnx,tflite}")
    export.add_argument("--quantize", metavar="{float16,int8}", help="tflite: float16 or int8; onnx: int8")
    export.add_argument("--repository", type=Path, default=Path("models"), help="default: models")
    export.add_argument("--version", type=int, help="version number (default: next free)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.add_argument("--name", help="model name in the repository (default: from the run)")
    export.add_argument("--data-dir", type=Path, help="dataset folder, if the run used --data-dir")
    export.add_argument("--calibration-images", type=int, default=300, help="int8 calibration images (300)")
    export.add_argument(
        "--max-accuracy-drop", type=float, default=1.0,
        help="quantized accuracy loss allowed, in points (default 1.0)",
    )  # fmt: skip
    export.add_argument("--max-batch-size", type=int, default=64, help="for config.json (64)")
    export.add_argument(
        "--max-queue-delay-ms", type=float, default=0.0,
        help="for config.json: how long the server may hold a request to fill a batch (0)",
    )  # fmt: skip
    export.add_argument(
        "--parity-images",
        type=int,
        default=PARITY_IMAGES,
        help=f"test images to verify on (default {PARITY_IMAGES})",
    )
    export.add_argument(
        "--version-policy",
        metavar="latest[:N]|all|specific:V[,V]",
        help="which versions a server serves, written to config.json (default: the model's current "
        "policy, or latest:1 for a new model)",
    )
    export.set_defaults(handler=run_export)


def _check_positive(name: str, value: int) -> None:
    from cnnserve.contracts.errors import CnnserveError

    if value < 1:
        raise CnnserveError(f"{name} must be a positive integer, received {value}")


def run_export(args: argparse.Namespace) -> int:
    from cnnserve.contracts.errors import CnnserveError
    from cnnserve.contracts.model_repository import VersionPolicy

    if args.format not in FORMAT_NAMES:
        raise CnnserveError(f"unsupported format {args.format!r}; choose one of {', '.join(FORMAT_NAMES)}")
    if args.quantize is not None and args.quantize not in QUANTIZE_NAMES:
        raise CnnserveError(
            f"unsupported quantization {args.quantize!r}; choose one of {', '.join(QUANTIZE_NAMES)}"
        )
    for name in ("parity_images", "calibration_images", "max_batch_size"):
        _check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.max_queue_delay_ms < 0:
        raise CnnserveError(f"--max-queue-delay-ms must be >= 0, received {args.max_queue_delay_ms:g}")
    import_tensorflow_quietly()
    from cnnserve.export.pipeline import export_run

    result = export_run(
        args.run,
        args.format,
        quantize=args.quantize,
        repository=args.repository,
        version=args.version,
        overwrite=args.overwrite,
        name=args.name,
        data_dir=args.data_dir,
        calibration_images=args.calibration_images,
        max_accuracy_drop_points=args.max_accuracy_drop,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        parity_images=args.parity_images,
        version_policy=VersionPolicy.parse(args.version_policy) if args.version_policy else None,
    )
    print_export(result)
    return 0


def print_export(result) -> None:
    from rich.console import Console
    from rich.table import Table

    report = result.report  # an ExportReport
    export = report.export
    label = result.format + (f" {result.quantize}" if result.quantize else "")
    table = Table(title=f"export {label}: {result.model_name} v{result.version}")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("written", str(result.path))
    table.add_row("size", f"{export.size_bytes / 1e6:.2f} MB")
    if export.nodes is not None:
        table.add_row("ONNX nodes", f"{export.nodes[0]} → {export.nodes[1]} after clean-up")
    parity = report.parity
    table.add_row(
        "parity vs folded SavedModel",
        f"max |Δlogit| {parity.max_abs_logit_diff:.2e}, top-1 agreement "
        f"{parity.top1_agreement:.2%} ({parity.images} test images, batch sizes "
        f"{', '.join(map(str, parity.batch_sizes))})",
    )
    accuracy = f"{report.test_accuracy:.4f}"
    if export.float_test_accuracy is not None and result.quantize:
        accuracy += f" (float {export.float_test_accuracy:.4f}, {-export.accuracy_drop_points:+.2f} points)"
    table.add_row("test accuracy", accuracy)
    if export.int8_ops:
        table.add_row("int8 ops", _op_counts(list(export.int8_ops)))
    if export.float_ops:
        table.add_row("ops left in float", ", ".join(sorted(set(export.float_ops))))
    Console().print(table)


def _op_counts(ops: list[str]) -> str:
    return ", ".join(f"{op} ×{ops.count(op)}" if ops.count(op) > 1 else op for op in sorted(set(ops)))
