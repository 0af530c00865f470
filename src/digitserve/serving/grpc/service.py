"""The six RPCs of the Open Inference Protocol's `GRPCInferenceService`, answered by this process's
services: the same readiness and metadata as `/v2` REST (serving/api/v2/oip.py) and, for
`ModelInfer`, the same admission, pipeline, batcher, deadline and canary routing.

The RPCs are registered from the compiled definition's service descriptor (`handlers`), taking
and giving bytes: calls.py parses each message inside the observed call. Every call gets a
request id (the client's `x-request-id` metadata when sane, else a new one; sent back in the
trailers), is counted in the request metrics and written to the access log as REST requests are:
route the RPC's full name, method `GRPC`, status the HTTP status its answer has on REST, plus
`grpc_code`. A refusal is the gRPC status of its HTTP one (calls.STATUS); only a bug is INTERNAL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from digitserve import __version__
from digitserve.serving.api.v2.oip import describe_model, model_not_ready, parse_version, server_not_ready
from digitserve.serving.api.v2.schemas import EXTENSIONS
from digitserve.serving.errors import InvalidInputError, ShuttingDownError
from digitserve.serving.grpc.calls import SERVICE, Call, Handler, Refused, answer, header, parse, route
from digitserve.serving.grpc.codec import read_infer, render_infer
from digitserve.serving.grpc.proto import open_inference_pb2 as pb
from digitserve.serving.http.admission import DEADLINE, Admission
from digitserve.serving.http.routes import Prediction
from digitserve.serving.http.shutdown import Drain
from digitserve.serving.observability.requests import HttpObserver
from digitserve.serving.pipeline import Selector
from digitserve.serving.rollouts.routing import MAX_STICKY, STICKY_HEADER
from digitserve.serving.services import Services

INLINE_BYTES = 256 * 1024  # larger messages are parsed and decoded off the event loop, as REST's bodies
T = TypeVar("T")


async def off_loop(large: bool, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)`, in a thread for a large message (its parse and decode would hold the loop)."""
    return await asyncio.to_thread(work, *args) if large else work(*args)


class InferenceService:
    """`GRPCInferenceService` on this process's services (made once they have started)."""

    def __init__(self, services: Services, admission: Admission, drain: Drain, observer: HttpObserver) -> None:
        self.services, self.admission, self.drain, self.observer = services, admission, drain, observer

    def handlers(self) -> grpc.GenericRpcHandler:
        """Every RPC of the compiled service, bytes in and out, each answered by `answer`."""
        service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        assert service.full_name == SERVICE
        methods = {m.name: grpc.unary_unary_rpc_method_handler(self._rpc(m.name)) for m in service.methods}
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _rpc(self, name: str) -> Any:
        handle: Handler = getattr(self, f"_{name}")

        async def rpc(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await answer(name, raw, context, handle, self.observer)

        return rpc

    # --- what each answers -----------------------------------------------------------------

    async def _ServerLive(self, raw: bytes, call: Call) -> Message:
        parse(pb.ServerLiveRequest, raw)
        return pb.ServerLiveResponse(live=True)

    async def _ServerReady(self, raw: bytes, call: Call) -> Message:
        parse(pb.ServerReadyRequest, raw)
        return pb.ServerReadyResponse(ready=server_not_ready(self.services.versions, self.drain) is None)

    async def _ModelReady(self, raw: bytes, call: Call) -> Message:
        request = parse(pb.ModelReadyRequest, raw)
        catalog, versions = self.services.catalog, self.services.versions
        _, reason = await model_not_ready(catalog, versions, self.drain, request.name, request.version)
        return pb.ModelReadyResponse(ready=reason is None)

    async def _ServerMetadata(self, raw: bytes, call: Call) -> Message:
        parse(pb.ServerMetadataRequest, raw)
        return pb.ServerMetadataResponse(name="digitserve", version=__version__, extensions=EXTENSIONS)

    async def _ModelMetadata(self, raw: bytes, call: Call) -> Message:
        request = parse(pb.ModelMetadataRequest, raw)
        found = await describe_model(self.services.catalog, self.services.versions, request.name, request.version)
        return pb.ModelMetadataResponse(**found)

    async def _ModelInfer(self, raw: bytes, call: Call) -> Message:
        if self.drain.active:
            raise ShuttingDownError("the server is shutting down; retry on another replica")
        large = len(raw) > INLINE_BYTES
        request = await off_loop(large, parse, pb.ModelInferRequest, raw)
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
            decoded = await off_loop(large, read_infer, request, pipeline.limits)
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
        return Selector(sticky=sticky.decode("utf-8", "replace") if sticky else None)
