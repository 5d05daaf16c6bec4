"""`cnnserve models`, `cnnserve train` and `cnnserve fold`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnserve.contracts.errors import CnnserveError
from cnnserve.contracts.parity import PARITY_IMAGES
from cnnserve.training.data import DATASETS
from cnnserve.training.quiet_tf import import_tensorflow_quietly

# Kept in step with cnnserve.training.distribute.MODES (that module imports TensorFlow).
MODES = ("none", "mirrored", "multiworker")


def register(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list the model zoo")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=run_models)

    train = commands.add_parser(
        "train",
        help="train a zoo model and write a run directory",
        description="Train a zoo model; unset options take the source tutorial's defaults.",
    )
    train.add_argument("--model", help="zoo model name (see 'cnnserve models')")
    train.add_argument("--dataset", default="fashion_mnist", choices=DATASETS)
    train.add_argument("--data-dir", type=Path, help="folder with the dataset files")
    train.add_argument("--out", type=Path, help="run directory to write")
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue an interrupted run from its latest checkpoint, with the settings it was "
        "started with (other training options are ignored)",
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="passes over the training set")
    length.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="initial learning rate")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--val-size", type=int, help="validation images held out of train")
    train.add_argument("--train-size", type=int, help="train on the first N training images only")
    train.add_argument(
        "--synthetic-size", type=int, default=4096, help="training images for --dataset synthetic"
    )
    train.add_argument(
        "--precise-bn-batches",
        type=int,
        default=20,
        help="after training, recompute BatchNorm statistics over this many batches of 256 "
        "training images (0: keep the moving averages, as the sources did)",
    )
    train.add_argument(
        "--no-fold", action="store_true", help="skip writing RUN/inference.savedmodel (see 'cnnserve fold')"
    )
    train.add_argument(
        "--checkpoint-every-steps",
        type=int,
        metavar="K",
        help="checkpoint every K steps as well as after every epoch (RUN/checkpoints/)",
    )
    train.add_argument(
        "--distribute",
        default="none",
        choices=MODES,
        help="mirrored: every local GPU; multiworker: the workers TF_CONFIG lists (same command on each)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.add_argument("--no-progress", action="store_true", help="per-epoch lines only")
    train.set_defaults(handler=run_train)

    fold = commands.add_parser(
        "fold",
        help="fold BatchNorm: write RUN/inference.savedmodel and RUN/export_report.json",
        description="Removes every BatchNormalization from RUN/model.keras, verifies the folded "
        "model on real test images and writes RUN/inference.savedmodel.",
    )
    fold.add_argument("run", type=Path, metavar="RUN", help="run directory from 'cnnserve train'")
    fold.add_argument("--data-dir", type=Path, help="dataset folder, if the run used --data-dir")
    fold.add_argument(
        "--parity-images",
        type=int,
        default=PARITY_IMAGES,
        help=f"test images to verify on (default {PARITY_IMAGES})",
    )
    fold.set_defaults(handler=run_fold)


def zoo_table() -> list[dict]:
    import_tensorflow_quietly()
    from cnnserve.training.models import ZOO, count_params, flops_per_image

    rows = []
    for spec in ZOO.values():
        model = spec.build()
        rows.append(
            {
                "name": spec.name,
                "input_shape": list(spec.input_shape),
                "dataset": spec.dataset,
                "params": count_params(model),
                "flops_per_image": flops_per_image(model),
                "description": spec.description,
            }
        )
    return rows


def run_models(args: argparse.Namespace) -> int:
    rows = zoo_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cnnserve model zoo")
    for column in ("name", "input", "source dataset", "params", "MFLOPs/image"):
        table.add_column(column, justify="right" if column in ("params", "MFLOPs/image") else "left")
    for row in rows:
        table.add_row(
            row["name"], "x".join(map(str, row["input_shape"])), row["dataset"],
            f"{row['params']:,}", f"{row['flops_per_image'] / 1e6:.1f}",
        )  # fmt: skip
    Console().print(table)
    return 0


def run_train(args: argparse.Namespace) -> int:
    if args.resume is None and (args.model is None or args.out is None):
        raise CnnserveError("give --model and --out (or --resume RUN to continue a run)")
    if args.distribute == "none":
        import_tensorflow_quietly()
    # A distributed strategy must be created before TensorFlow runs its first operation,
    # which the quiet import does; `train` creates it first thing.
    from cnnserve.training.train import TrainConfig, resume_config, train

    if args.resume is not None:
        train(resume_config(args.resume, show_progress=not args.no_progress), resume=True)
        return 0
    config = TrainConfig(
        model=args.model,
        out=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        val_size=args.val_size,
        synthetic_size=args.synthetic_size,
        train_size=args.train_size,
        precise_bn_batches=args.precise_bn_batches,
        fold=not args.no_fold,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
        checkpoint_every_steps=args.checkpoint_every_steps,
        distribute=args.distribute,
    )
    train(config)
    return 0


def run_fold(args: argparse.Namespace) -> int:
    if args.parity_images < 1:
        raise CnnserveError(f"--parity-images must be a positive integer, received {args.parity_images}")
    import_tensorflow_quietly()
    from cnnserve.training.fold_run import fold_run

    fold_run(args.run, data_dir=args.data_dir, parity_images=args.parity_images)
    return 0
