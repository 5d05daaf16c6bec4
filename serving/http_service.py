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
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cnnserve import __version__
from cnnserve.contracts.errors import CnnserveError
from cnnserve.serving import v2_converters as convert
from cnnserve.serving import v2_json
from cnnserve.serving.access_log import REQUEST_ID_HEADER, AccessRecord
from cnnserve.serving.dataplane import DataPlane
from cnnserve.serving.errors import ServingError, http_status_of
from cnnserve.serving.lifecycle import ModelManager
from cnnserve.serving.registry import ModelState
from cnnserve.serving.server_report import ServerReport
from cnnserve.serving.v2_service import EXTENSIONS, model_config_proto, statistics_proto

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
        return _json({"name": "cnnserve", "version": __version__, "extensions": list(EXTENSIONS)})

    def _model(self, request: web.Request):
        return self._registry.get(request.match_info["model"], request.match_info.get("version", ""))

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._model(request)
        return _json(
            {
                "name": model.name,
                "versions": self._registry.ready_versions_of(model.name),
                "platform": model.config.platform,
                "inputs": [_tensor_metadata(t) for t in model.config.inputs],
                "outputs": [_tensor_metadata(t) for t in model.config.outputs],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._model(request)
        except ServingError:
            return _json({"ready": False}, 503)
        return _json({"ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(proto_json(model_config_proto(self._model(request))))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        wanted = self._registry.statistics_keys(name, version)
        report = await self._reports()
        stats = [
            proto_json(statistics_proto(v))
            for v in report.versions
            if v.state == ModelState.READY and (wanted is None or (v.name, v.version) in wanted)
        ]
        return _json({"model_stats": stats})

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
        client_id = request.headers.get(REQUEST_ID_HEADER, "")[:64]
        with self._dataplane.logged("http", name, version, client_id, started_ns) as record:
            response = await self._infer(request, started_ns, record)
            if record is not None:
                response.headers[REQUEST_ID_HEADER] = record.request_id
            return response

    async def _infer(
        self, request: web.Request, started_ns: int, record: AccessRecord | None
    ) -> web.Response:
        body = await request.read()
        model = self._model(request)
        with self._dataplane.counted(model, started_ns):
            parsed = v2_json.parse_request(body, request.headers.get(v2_json.HEADER_LENGTH))
            if record is not None and parsed.id:
                record.request_id = parsed.id[:64]
            blobs = v2_json.encoded_input(parsed, model.config.inputs[0])
            if blobs is None:
                images = v2_json.decode_input(parsed, model.config.inputs[0])
            else:
                images = await self._dataplane.decode_encoded(model, blobs, "inputs[0]")
                model = self._model(request)  # it may have been swapped while decoding
            wanted = v2_json.requested_outputs(parsed, model.config, self._dataplane.num_classes(model))
            inference = await self._dataplane.infer(model, images, started_ns, None, field="inputs[0]")
        self._dataplane.note(record, inference)
        arrays = []
        for name, top_k, binary in wanted:
            array = inference.outputs[name]
            if top_k:
                array = convert.classification_strings(array, top_k, model.config.class_labels)
            arrays.append((name, array, binary))
        outputs, tail = v2_json.encode_outputs(arrays)
        head = {
            "model_name": model.name,
            "model_version": model.version,
            "outputs": outputs,
            "parameters": {"execution_provider": model.provider},
        }
        if parsed.id:
            head["id"] = parsed.id
        text = json.dumps(head).encode()
        if not tail:
            return web.Response(body=text, content_type="application/json")
        return web.Response(
            body=text + tail,
            content_type="application/octet-stream",
            headers={v2_json.HEADER_LENGTH: str(len(text))},
        )


def proto_json(message: Message) -> dict:
    """A protobuf message as Triton's HTTP endpoints write it: 64-bit integers as JSON numbers
    (protobuf's own JSON mapping makes them strings), enums by name, scalars even when zero,
    unset sub-messages and the unchosen members of a oneof left out."""
    fields = {}
    for field in message.DESCRIPTOR.fields:
        singular_message = field.message_type is not None and field.label != FieldDescriptor.LABEL_REPEATED
        if (field.containing_oneof is not None or singular_message) and not message.HasField(field.name):
            continue
        fields[field.name] = _field_json(field, getattr(message, field.name))
    return fields


def _field_json(field: FieldDescriptor, value: object) -> object:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _scalar_json(value_field, item) for key, item in value.items()}  # type: ignore[attr-defined]
    if field.label == FieldDescriptor.LABEL_REPEATED:
        return [_scalar_json(field, item) for item in value]  # type: ignore[attr-defined]
    return _scalar_json(field, value)


def _scalar_json(field: FieldDescriptor, value: object) -> object:
    if field.message_type is not None:
        return proto_json(value)  # type: ignore[arg-type]
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name  # type: ignore[index]
    return value


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": convert.v2_datatype(spec.dtype), "shape": list(spec.shape)}
