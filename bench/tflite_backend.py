"""TFLite through ai_edge_litert (XNNPACK on CPU), float32 or int8.

The input is resized and tensors allocated once per batch size in `prepare`, outside the timed
region; the signature runner would resize and reallocate on every call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnserve.bench.backends import BackendUnavailable
from cnnserve.bench.options import RuntimeOptions
from cnnserve.contracts.names import SERVING_SIGNATURE


class TfliteBackend:
    device = "cpu"
    engine = "XNNPACK"

    def __init__(self, variant: str, path: Path, options: RuntimeOptions) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if options.device == "cuda":
            raise BackendUnavailable("--device cuda: TFLite runs on the CPU only here")
        self.variant = variant
        self.options = options
        self.interpreter = Interpreter(model_path=str(path), num_threads=options.threads)
        signatures = self.interpreter.get_signature_list()
        if SERVING_SIGNATURE not in signatures:
            raise BackendUnavailable(f"{path} has no {SERVING_SIGNATURE} signature; re-export it")
        runner = self.interpreter.get_signature_runner(SERVING_SIGNATURE)
        self.input = runner.get_input_details()["images"]
        self.output_index = runner.get_output_details()["logits"]["index"]
        self.batch_size = 0

    def prepare(self, batch_size: int) -> None:
        shape = [batch_size, *self.input["shape_signature"][1:]]
        self.interpreter.resize_tensor_input(self.input["index"], shape, strict=True)
        self.interpreter.allocate_tensors()
        self.batch_size = batch_size

    def run(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch_size:
            self.prepare(len(images))
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)

    def settings(self) -> dict[str, object]:
        return {"num_threads": self.options.threads}
