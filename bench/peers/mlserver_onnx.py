"""An MLServer runtime that serves one ONNX image classifier with ONNX Runtime (CPU).

MLServer ships no ONNX runtime of its own; its documented way to serve another framework is a
custom `MLModel` like this one, named by `implementation` in model-settings.json. It runs in
MLServer's own virtualenv (bench/peers/setup.sh), never in the project's. The model file comes
from `parameters.uri`, as MLServer's own runtimes read it; adaptive batching is MLServer's
(`max_batch_size`, `max_batch_time`), which concatenates requests along the first axis before
`predict` and splits the outputs after it.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxImageClassifier(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        logits = self._session.run(["logits"], {self._input: images})[0]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("logits", logits)],
        )
