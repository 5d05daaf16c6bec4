"""SIGTERM under load: every accepted request is answered, then the server exits 0."""

from __future__ import annotations

import signal
import threading
import time
from urllib.request import urlopen

import grpc
import numpy as np
from conftest import ServerProcess
from onnx_models import images
from prometheus_client.parser import text_string_to_metric_families

from cnnserve.protos import classifier_pb2 as pb
from cnnserve.protos import classifier_pb2_grpc
from cnnserve.serving.converters import encode_tensor

ACCEPTED = 40


def pending(server: ServerProcess) -> float:
    with urlopen(server.metrics_url, timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "nv_inference_pending_request_count"
    )


def test_sigterm_answers_every_accepted_request_and_exits_zero(start_server) -> None:
    server = start_server(
        "--models", "identity", "--max-queue-delay-ms", "20000", "--max-batch-size", "64", "--grace-s", "30"
    )  # fmt: skip
    stub = classifier_pb2_grpc.ClassifierStub(server.channel())
    batch = images(ACCEPTED, seed=5)
    requests = [
        pb.PredictRequest(model_name="identity", images=encode_tensor(batch[i : i + 1]))
        for i in range(ACCEPTED)
    ]
    accepted = [stub.Predict.future(request, timeout=60) for request in requests]
    deadline = time.monotonic() + 30
    while pending(server) < ACCEPTED:  # all of them are in the server's queue
        assert time.monotonic() < deadline
        time.sleep(0.02)

    # More load keeps arriving during the shutdown: each call is either served or refused.
    late_codes: list[grpc.StatusCode] = []
    stop_load = threading.Event()

    def keep_sending() -> None:
        with grpc.insecure_channel(server.target) as channel:
            late = classifier_pb2_grpc.ClassifierStub(channel)
            while not stop_load.is_set():
                try:
                    late.Predict(requests[0], timeout=30)
                    late_codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    late_codes.append(error.code())
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        return  # the server has stopped listening

    load = threading.Thread(target=keep_sending)
    load.start()
    while pending(server) < ACCEPTED + 1:  # the extra load is queued too
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not any(future.done() for future in accepted)  # nothing has run yet: all is up to the drain
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)

    for i, future in enumerate(accepted):
        response = future.result(timeout=60)  # raises if the call was dropped
        logits = np.frombuffer(response.logits.data, dtype=np.float32).reshape(1, 10)
        np.testing.assert_array_equal(logits, batch[i : i + 1].reshape(1, -1)[:, :10].astype(np.float32))
    assert server.process.wait(timeout=60) == 0
    stop_load.set()
    load.join(timeout=60)
    assert set(late_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, late_codes
