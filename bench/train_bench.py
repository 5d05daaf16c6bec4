"""`cnnserve bench train`: examples/s and % of this machine's matmul peak per training step.

Each zoo model trains on random uint8 images of its input shape through the same tf.data stream
and the same `fit` loop as `cnnserve train` (source optimizer, loss and batch size unless
`--batch-size`), so the figure is what a real run gets, minus the epoch-end validation. A step's
FLOPs are counted as 3× the forward pass (the backward pass computes gradients for both the
inputs and the weights of each layer); the peak is `peak.measure_peak`, measured in the same run.
`--jit-compile both` times Keras's default (no XLA on CPU) and XLA on the same model.
`--onednn both` times each model with TensorFlow's Eigen kernels and with oneDNN's, one child
process per setting (TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads), back to back
and against one peak, so a slow spell of a shared machine lands on both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnserve.contracts.errors import CnnserveError

JIT_MODES = ("off", "on", "both")
ONEDNN_MODES = ("on", "off", "both")
BATCHNORM_MODES = ("fused", "keras", "both")


@dataclass(frozen=True)
class TrainPoint:
    model: str
    batch_size: int
    xla: bool
    steps: int
    seconds: float
    examples_per_s: float
    step_ms: float
    gflops: float
    peak_percent: float
    forward_flops_per_image: int
    onednn: bool | None = None  # TensorFlow's own answer: were oneDNN's kernels on?
    batchnorm: str = "fused"  # the zoo's fused-kernel BatchNorm, Keras's own, or "none" in the model

    def as_dict(self) -> dict:
        return asdict(self)


def _timed_fit(model, stream, steps: int) -> float:
    """Seconds for `steps` - 1 steps, end of the first to end of the last: no fit set-up in it."""
    import keras

    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
    )
    model.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[clock])
    return ends[-1] - ends[0]


def with_keras_batchnorm(model):
    """`model` rebuilt with Keras's own BatchNormalization where the zoo has the fused one
    (fresh weights: only the speed is compared)."""
    import keras

    from cnnserve.training.layers import FusedBatchNormalization

    def clone(layer):
        kind = keras.layers.BatchNormalization if type(layer) is FusedBatchNormalization else type(layer)
        return kind.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def measure_model(
    name: str,
    batch_size: int | None,
    xla: bool,
    warmup_steps: int,
    min_time_s: float,
    peak_gflops: float,
    batchnorm: str = "fused",
) -> TrainPoint:
    import keras

    from cnnserve.training.data import Split
    from cnnserve.training.models import flops_per_image, get_spec
    from cnnserve.training.pipeline import training_pipeline
    from cnnserve.training.precise_bn import batchnorm_layers
    from cnnserve.training.quiet_tf import onednn_enabled
    from cnnserve.training.train import compile_for_training

    spec = get_spec(name)
    batch = batch_size or spec.defaults.batch_size
    keras.utils.set_random_seed(0)
    model = spec.build()
    if not batchnorm_layers(model):
        batchnorm = "none"
    elif batchnorm == "keras":
        model = with_keras_batchnorm(model)
    compile_for_training(model, spec, spec.defaults.learning_rate, jit_compile=xla)
    rng = np.random.default_rng(0)
    count = max(4 * batch, 2048)
    images = rng.integers(0, 256, (count, *spec.input_shape), dtype=np.uint8)
    split = Split(images, rng.integers(0, 10, count))
    stream, _ = training_pipeline(split, batch, seed=0)
    _timed_fit(model, stream, warmup_steps)  # tracing (and XLA compilation), first-run allocation
    steps = max(warmup_steps, 2)
    seconds = _timed_fit(model, stream, steps + 1)
    while seconds < min_time_s:  # grow until one timed fit lasts at least min_time_s
        steps = int(steps * min(4.0, 1.2 * min_time_s / max(seconds, 1e-3))) + 1
        seconds = _timed_fit(model, stream, steps + 1)
    forward = flops_per_image(model)
    gflops = 3 * forward * batch * steps / seconds / 1e9
    return TrainPoint(
        name, batch, xla, steps, seconds, batch * steps / seconds, 1000 * seconds / steps, gflops,
        100 * gflops / peak_gflops, forward, onednn_enabled(), batchnorm,
    )  # fmt: skip


def run_train_bench(
    models: list[str],
    batch_size: int | None,
    jit: str,
    threads: int,
    warmup_steps: int = 3,
    min_time_s: float = 10.0,
    peak_size: int = 2048,
    peak_repeats: int = 10,
    peak_gflops: float | None = None,
    batchnorm: str = "fused",
) -> tuple[float, list[TrainPoint]]:
    """Returns (matmul peak GFLOP/s, one point per model, XLA and BatchNorm setting; a model
    without BatchNorm is measured once, whatever `batchnorm` says)."""
    from cnnserve.bench.peak import measure_peak

    if jit not in JIT_MODES:
        raise CnnserveError(f"--jit-compile must be one of {', '.join(JIT_MODES)}, received {jit!r}")
    peak = peak_gflops or measure_peak(threads, peak_size, peak_repeats).gflops
    if batchnorm not in BATCHNORM_MODES:
        raise CnnserveError(
            f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, received {batchnorm!r}"
        )
    settings = {"off": (False,), "on": (True,), "both": (False, True)}[jit]
    norms = ("keras", "fused") if batchnorm == "both" else (batchnorm,)
    points = []
    for name in models:
        for xla in settings:
            for norm in norms:
                point = measure_model(name, batch_size, xla, warmup_steps, min_time_s, peak, norm)
                points.append(point)
                if point.batchnorm == "none":
                    break  # no BatchNorm in the model: a second setting would time the same graph
    return peak, points


# --------------------------------------------------------------------------- CLI


def register(stages: argparse._SubParsersAction) -> None:
    train = stages.add_parser(
        "train",
        help="training examples/s and %% of the matmul peak per zoo model",
        description="Times each zoo model's training step on random images (source batch size and "
        "optimizer) and sets it against this machine's float32 matmul peak, measured in the same run.",
    )
    train.add_argument("--model", default="all", help="zoo model names, comma-separated, or 'all'")
    train.add_argument("--batch-size", type=int, help="instead of each model's source batch size")
    train.add_argument("--jit-compile", choices=JIT_MODES, default="off", help="XLA: off, on or both")
    train.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: every core)")
    train.add_argument("--min-time-s", type=float, default=10.0, help="shortest timed fit per model")
    train.add_argument("--peak-size", type=int, default=2048, help="largest matmul of the peak measurement")
    train.add_argument("--peak-repeats", type=int, default=10, help="timed matmuls per size for the peak")
    train.add_argument("--peak-gflops", type=float, help="use this matmul peak instead of measuring one")
    train.add_argument(
        "--batchnorm", choices=BATCHNORM_MODES, default="fused",
        help="BatchNorm training kernel: the zoo's fused one, Keras's own, or both (default: fused)",
    )  # fmt: skip
    train.add_argument(
        "--onednn", choices=ONEDNN_MODES,
        help="TensorFlow's oneDNN kernels: on, off, or both (each setting in its own process); "
        "default: the environment's TF_ENABLE_ONEDNN_OPTS, else on",
    )  # fmt: skip
    train.add_argument("--json", type=Path, help="write the points as JSON")
    train.set_defaults(handler=run_train_command)


def run_train_command(args: argparse.Namespace) -> int:
    threads = args.threads or os.cpu_count() or 1
    if threads < 1 or (args.batch_size is not None and args.batch_size < 1) or args.min_time_s <= 0:
        raise CnnserveError("--threads, --batch-size and --min-time-s must be positive")
    if args.peak_gflops is not None and args.peak_gflops <= 0:
        raise CnnserveError(f"--peak-gflops must be positive, received {args.peak_gflops:g}")
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)  # before TensorFlow loads
    from cnnserve.training import ONEDNN_VARIABLE

    if args.onednn in ("on", "off"):
        if "tensorflow" in sys.modules:
            raise CnnserveError("--onednn: TensorFlow was loaded before the setting could apply")
        os.environ[ONEDNN_VARIABLE] = "1" if args.onednn == "on" else "0"
    from cnnserve.training.quiet_tf import import_tensorflow_quietly

    import_tensorflow_quietly()
    from cnnserve.training.models import ZOO

    names = list(ZOO) if args.model == "all" else [name.strip() for name in args.model.split(",")]
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        raise CnnserveError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ZOO)} or 'all'")
    if args.onednn == "both":
        peak, points = _each_onednn_setting(args, names, threads)
    else:
        peak, points = run_train_bench(
            names, args.batch_size, args.jit_compile, threads, min_time_s=args.min_time_s,
            peak_size=args.peak_size, peak_repeats=args.peak_repeats, peak_gflops=args.peak_gflops,
            batchnorm=args.batchnorm,
        )  # fmt: skip

    from cnnserve.bench import console

    console.show_train(peak, threads, points)
    if args.json:
        record = {"peak_gflops": peak, "threads": threads, "points": [p.as_dict() for p in points]}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _each_onednn_setting(
    args: argparse.Namespace, names: list[str], threads: int
) -> tuple[float, list[TrainPoint]]:
    """Per model, Eigen then oneDNN, each a `bench train` child of its own against one peak."""
    from cnnserve.bench.peak import measure_peak

    peak = args.peak_gflops or measure_peak(threads, args.peak_size, args.peak_repeats).gflops
    points: list[TrainPoint] = []
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-train-") as folder:
        for name in names:
            for setting in ("off", "on"):
                out = Path(folder) / f"{name}-{setting}.json"
                command = [
                    sys.executable, "-m", "cnnserve", "bench", "train", "--model", name, "--onednn", setting,
                    "--jit-compile", args.jit_compile, "--threads", str(threads), "--min-time-s",
                    str(args.min_time_s), "--peak-gflops", str(peak), "--json", str(out),
                    "--batchnorm", args.batchnorm,
                    *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
                ]  # fmt: skip
                child = subprocess.run(command, capture_output=True, text=True)
                if child.returncode != 0:
                    tail = (child.stderr or child.stdout).strip().splitlines()[-5:]
                    raise CnnserveError(f"{name} with --onednn {setting} failed: " + " | ".join(tail))
                points += [TrainPoint(**p) for p in json.loads(out.read_text())["points"]]
    return peak, points
