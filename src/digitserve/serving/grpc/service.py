"""The six RPCs of the Open Inference Protocol's `GRPCInferenceService`, answered by this process's
services: the same readiness and metadata as `/v2` REST (serving/api/v2/oip.py) and, for
`ModelInfer`, the same admission, pipeline, batcher, deadline and canary routing.

Every call gets a request id (the client's `x-request-id` metadata when sane, else a new one; sent
back in the trailing metadata), is counted in the request metrics and written to the access log
as REST requests are: route the RPC's full name, method `GRPC`, status the HTTP status its answer
has on REST, plus `grpc_code`. A refusal is the gRPC status of its HTTP one (STATUS below), with
the same message, and `digitserve-code` (the error code) and `retry-after` in its trailing
metadata; only a bug is INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from digitserve import __version__
from digitserve.config import Settings
from digitserve.serving.api.v2.oip import describe_model, model_not_ready, parse_version, server_not_ready
from digitserve.serving.api.v2.schemas import EXTENSIONS
from digitserve.serving.errors import HttpError, InvalidInputError, ShuttingDownError, http_error
from digitserve.serving.grpc.codec import raw_size, read_infer, render_infer
from digitserve.serving.grpc.proto import open_inference_pb2 as pb
from digitserve.serving.grpc.proto.open_inference_pb2_grpc import GRPCInferenceServiceServicer
from digitserve.serving.http.admission import DEADLINE, Admission
from digitserve.serving.http.edge import CLIENT_LEFT
from digitserve.serving.http.request_id import request_id_from
from digitserve.serving.http.routes import Prediction
from digitserve.serving.http.shutdown import Drain
from digitserve.serving.observability.logs import current_request
from digitserve.serving.observability.record import RequestRecord
from digitserve.serving.observability.requests import HttpObserver
from digitserve.serving.pipeline import Selector
from digitserve.serving.rollouts.routing import MAX_STICKY, STICKY_HEADER
from digitserve.serving.services import Services

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
INLINE_BYTES = 256 * 1024  # requests with more raw tensor data are decoded off the event loop
Response = TypeVar("Response")

# The gRPC status of each HTTP status the service refuses with (anything else is a bug: INTERNAL).
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Refused(Exception):
    """Admission's refusal on arrival (an `HttpError`, as the HTTP protocol would send it)."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.message)
        self.error = error


def peer_host(peer: str) -> str | None:
    """The client's address from a gRPC peer string (`ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0] or None
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]") or None
    return None


def metadata_of(context: grpc.aio.ServicerContext) -> list[tuple[bytes, bytes]]:
    pairs = []
    for key, value in context.invocation_metadata() or ():
        pairs.append((key.encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1")))
    return pairs


def header(metadata: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in metadata if key == name), None)


@dataclass
class Call:
    """One RPC as it is answered: its record and what its access line says."""

    record: RequestRecord
    metadata: list[tuple[bytes, bytes]]
    client: str | None
    status: int = 200
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK


class InferenceService(GRPCInferenceServiceServicer):
    """`GRPCInferenceService` on this process's services (made once they have started)."""

    def __init__(
        self, settings: Settings, services: Services, admission: Admission, drain: Drain, observer: HttpObserver
    ) -> None:
        self.settings, self.services, self.admission = settings, services, admission
        self.drain, self.observer = drain, observer

    # --- the RPCs --------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ServerLive", context, lambda call: self._live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ServerReady", context, lambda call: self._server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ModelReady", context, lambda call: self._model_ready(request))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ServerMetadata", context, lambda call: self._server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ModelMetadata", context, lambda call: self._model_metadata(request))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer("ModelInfer", context, lambda call: self._infer(request, call))

    # --- what each answers -----------------------------------------------------------------

    async def _live(self) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=server_not_ready(self.services.versions, self.drain) is None)

    async def _model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        catalog, versions = self.services.catalog, self.services.versions
        _, reason = await model_not_ready(catalog, versions, self.drain, request.name, request.version)
        return pb.ModelReadyResponse(ready=reason is None)

    async def _server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="digitserve", version=__version__, extensions=EXTENSIONS)

    async def _model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        found = await describe_model(self.services.catalog, self.services.versions, request.name, request.version)
        return pb.ModelMetadataResponse(**found)

    async def _infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        if self.drain.active:
            raise ShuttingDownError("the server is shutting down; retry on another replica")
        model, pinned = request.model_name, bool(request.model_version)
        selector = Selector(version=parse_version(model, request.model_version)) if pinned else self._sticky(call)
        state: dict[str, Any] = {}
        refusal = self.admission.admit(Prediction(model, route("ModelInfer"), pinned), state)
        if refusal is not None:
            raise Refused(refusal)
        self.admission.in_progress += 1
        try:
            pipeline = self.services.pipeline
            target = pipeline.target(model, selector, call.client, call.record)  # unknown model: NOT_FOUND
            if raw_size(request) > INLINE_BYTES:
                decoded = await asyncio.to_thread(read_infer, request, pipeline.limits)
            else:
                decoded = read_infer(request, pipeline.limits)
            if decoded.images is not None:
                names = [f"images[{i}]" for i in range(len(decoded.images))]
                result = await pipeline.predict_encoded(target, decoded.images, names, state[DEADLINE])
            else:
                assert decoded.pixels is not None
                result = await pipeline.predict_pixels(target, decoded.pixels, state[DEADLINE])
            return render_infer(decoded, result, call.record.request_id)
        finally:
            self.admission.in_progress -= 1

    def _sticky(self, call: Call) -> Selector:
        sticky = header(call.metadata, STICKY_HEADER.encode())
        if sticky is not None and len(sticky) > MAX_STICKY:
            raise InvalidInputError(f"the {STICKY_HEADER} metadata is over {MAX_STICKY} characters; send a shorter id")
        return Selector(sticky=sticky.decode("latin-1") if sticky else None)

    # --- one call, observed ----------------------------------------------------------------

    async def _answer(
        self, name: str, context: grpc.aio.ServicerContext, answer: Callable[[Call], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        metadata = metadata_of(context)
        call = Call(RequestRecord(request_id_from(metadata)), metadata, peer_host(context.peer()))
        current_request(call.record.request_id)
        ids = (("x-request-id", call.record.request_id),)
        try:
            response = await answer(call)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            call.status, call.grpc_code = CLIENT_LEFT, grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            error = exc.error if isinstance(exc, Refused) else http_error(exc)
            if error is None or error.status not in STATUS:
                log.exception("%s failed (request id %s)", name, call.record.request_id)
                error = HttpError(500, "internal", f"internal error; the server logged it as request {ids[0][1]}")
            call.status, call.grpc_code = error.status, STATUS.get(error.status, grpc.StatusCode.INTERNAL)
            call.record.code = error.code
            trailers = [*ids, ("digitserve-code", error.code)]
            if error.headers and "Retry-After" in error.headers:
                trailers.append(("retry-after", error.headers["Retry-After"]))
            await context.abort(call.grpc_code, error.message, trailing_metadata=tuple(trailers))
        else:
            context.set_trailing_metadata(ids)
            return response
        finally:
            seconds = time.monotonic() - started
            code = call.grpc_code.name
            self.observer.observe(call.record, route(name), "GRPC", call.status, seconds, call.client, grpc_code=code)
        raise AssertionError("unreachable: abort raises")


def route(rpc: str) -> str:
    """The route label of an RPC: its full method name."""
    return f"/{SERVICE}/{rpc}"
