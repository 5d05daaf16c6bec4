"""KServe V2 REST on `--http-port`, with Triton's paths, on aiohttp in the server's own event loop.

The same data plane, batchers, statistics and lifecycle manager serve both protocols; only the
conversion differs (`v2_json.py`), and errors go through the one map in `errors.py` (each error
type has one gRPC code, and each gRPC code one HTTP status). Bodies are JSON as Triton writes
them — `{"error": "..."}` for failures — so tritonclient.http, curl and Kubernetes `httpGet`
probes work against it.

    GET  /v2                                     server metadata
    GET  /v2/health/live | /v2/health/ready      200, or 503 when not ready
    GET  /v2/models/{m}[/versions/{v}]           model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready     200, or 503
    GET  /v2/models/{m}[/versions/{v}]/config    Triton's model configuration
    GET  /v2/models[/{m}[/versions/{v}]]/stats   statistics (the whole server's)
    POST /v2/models/{m}[/versions/{v}]/infer     JSON tensors or Triton's binary extension
    POST /v2/repository/index                    every model and version, with state
    POST /v2/repository/models/{m}/load | unload explicit model control
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving import v2_converters as convert
from cnnserve.serving import v2_json, v2_models
from cnnserve.serving.access_log import MAX_REQUEST_ID_CHARS, REQUEST_ID_HEADER
from cnnserve.serving.dataplane import DataPlane, Inference, InferenceCall, RequestedOutput, Tensors
from cnnserve.serving.errors import ServingError, http_status_of
from cnnserve.serving.lifecycle import ModelManager
from cnnserve.serving.registry import ServedVersion
from cnnserve.serving.server_report import ServerReport
from cnnserve.serving.v2_json import proto_json

_LOGGER = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers=headers
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one error map, as HTTP: a status and Triton's `{"error": message}`."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (ServingError, CnnserveError) as error:
        status, message = http_status_of(error)
        return _json({"error": message}, status)


class HttpService:
    """The aiohttp application and its listener; `start`/`stop` from the server's event loop."""

    def __init__(
        self,
        dataplane: DataPlane,
        manager: ModelManager,
        reports: Callable[[], Awaitable[ServerReport]],
        max_body_bytes: int,
    ) -> None:
        self._dataplane = dataplane
        self._registry = dataplane.registry
        self._manager = manager
        self._reports = reports
        self.draining = False
        self._app = web.Application(
            middlewares=[self._refuse_while_draining, _errors], client_max_size=max_body_bytes
        )
        model = r"/v2/models/{model}"
        version = r"/v2/models/{model}/versions/{version}"
        routes = [
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2/models/stats", self.statistics),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model}/load", self.load),
            web.post("/v2/repository/models/{model}/unload", self.unload),
        ]
        for prefix in (model, version):
            routes += [
                web.get(prefix, self.model_metadata),
                web.get(prefix + "/ready", self.model_ready),
                web.get(prefix + "/config", self.model_config),
                web.get(prefix + "/stats", self.statistics),
                web.post(prefix + "/infer", self.infer),
            ]
        self._app.add_routes(routes)
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _refuse_while_draining(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.draining and not request.path.startswith("/v2/health"):
            return _json({"error": "server is shutting down; retry on another replica"}, 503)
        return await handler(request)

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise CnnserveError(f"cannot serve HTTP on {host}:{port}: {error.strerror or error}") from None
        server = site._server  # aiohttp keeps the listening sockets here
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        """In-flight requests finish (the batchers are drained first); then the listener closes."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ health and metadata

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._dataplane.ready and not self.draining
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(proto_json(v2_models.server_metadata()))

    def _model(self, request: web.Request) -> ServedVersion:
        return self._dataplane.find(request.match_info["model"], request.match_info.get("version", ""))

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._model(request)
        return _json(
            proto_json(v2_models.model_metadata(model, self._registry.ready_versions_of(model.name)))
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._model(request)
        except ServingError:
            return _json({"ready": False}, 503)
        return _json({"ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(proto_json(v2_models.model_config_proto(self._model(request))))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        wanted = self._registry.statistics_keys(name, version)
        report = await self._reports()
        return _json(proto_json(v2_models.model_statistics(report, wanted)))

    # ------------------------------------------------------------------ repository

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        ready_only = bool(body.get("ready", False)) if isinstance(body, dict) else False
        entries = await self._manager.index(ready_only=ready_only)
        return _json(
            [
                {
                    k: v
                    for k, v in {
                        "name": e.name,
                        "version": e.version,
                        "state": e.state,
                        "reason": e.reason,
                    }.items()
                    if v
                }
                for e in entries
            ]
        )

    async def load(self, request: web.Request) -> web.Response:
        await self._manager.load(request.match_info["model"])
        return _json({})

    async def unload(self, request: web.Request) -> web.Response:
        await self._manager.unload(request.match_info["model"])
        return _json({})

    # ------------------------------------------------------------------ inference

    async def infer(self, request: web.Request) -> web.Response:
        started_ns = time.monotonic_ns()
        name, version = request.match_info["model"], request.match_info.get("version", "")
        received: list[v2_json.HttpInferRequest] = []  # the parsed body, once the data plane read it

        def tensors(model: ServedVersion, body: bytes) -> Tensors:
            parsed = v2_json.parse_request(body, request.headers.get(v2_json.HEADER_LENGTH))
            received.append(parsed)
            blobs = v2_json.encoded_input(parsed, model.config.inputs[0])
            if blobs is not None:
                return Tensors(files=blobs, request_id=parsed.id)
            return Tensors(images=v2_json.decode_input(parsed, model.config.inputs[0]), request_id=parsed.id)

        def outputs(model: ServedVersion) -> list[RequestedOutput]:
            return v2_json.requested_outputs(received[0], model.config, model.num_classes)

        inference = await self._dataplane.run(
            InferenceCall(
                "http",
                name,
                version,
                started_ns,
                tensors,
                request_id=request.headers.get(REQUEST_ID_HEADER, "")[:MAX_REQUEST_ID_CHARS],
                outputs=outputs,
                receive=request.read,
            )
        )
        return _infer_response(inference, received[0].id)


def _infer_response(inference: Inference, request_id: str) -> web.Response:
    """V2's JSON header, then the binary tail of the outputs sent as binary data."""
    model = inference.model
    outputs, tail = v2_json.encode_outputs(convert.output_arrays(inference))
    head = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": outputs,
        "parameters": {"execution_provider": model.provider},
    }
    if request_id:
        head["id"] = request_id
    text = json.dumps(head).encode()
    headers = {REQUEST_ID_HEADER: inference.request_id} if inference.request_id else {}
    if not tail:
        return web.Response(body=text, content_type="application/json", headers=headers)
    return web.Response(
        body=text + tail,
        content_type="application/octet-stream",
        headers={v2_json.HEADER_LENGTH: str(len(text)), **headers},
    )
