"""KServe's Python ModelServer serving one ONNX image classifier with ONNX Runtime (CPU).

KServe's ModelServer is how its custom Python predictors are served (its ONNX support in a
cluster goes through Triton, which is not a Python server). Runs in KServe's own virtualenv
(bench/peers/setup.sh):

    python kserve_onnx.py --model_name mnist_cnn --model_path model.onnx --grpc_port P --http_port Q

Every ModelServer flag (ports, workers, threads) is KServe's own parser's; KServe has no
server-side batching for Python models, so each request is one ONNX Runtime `run`.
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class OnnxImageClassifier(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self._session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0]
        self._output = next(o for o in self._session.get_outputs() if o.name == "logits")
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        shape = [-1, *self._input.shape[1:]]
        return [{"name": self._input.name, "datatype": "UINT8", "shape": shape}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "logits", "datatype": "FP32", "shape": [-1, *self._output.shape[1:]]}]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        images = payload.inputs[0].as_numpy()
        logits = self._session.run(["logits"], {self._input.name: images})[0]
        output = InferOutput(name="logits", shape=list(logits.shape), datatype="FP32")
        output.set_data_from_numpy(logits)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output])


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True, help="the ONNX file `cnnserve export` wrote")
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxImageClassifier(args.model_name, args.model_path)])


if __name__ == "__main__":
    main()
