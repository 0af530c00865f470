"""How the gRPC service answers what it refuses (serving/grpc/service.py), with a stand-in for
gRPC's servicer context: admission's 503 on arrival is UNAVAILABLE with its `retry-after` and
error code in the trailers, a bug is INTERNAL with a message that names the request and nothing
else, and every call -- answered, refused or cancelled -- is observed once."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from digitserve.serving.grpc.proto import open_inference_pb2 as pb
from digitserve.serving.grpc.service import InferenceService
from digitserve.serving.http.admission import Admission


class Aborted(Exception):
    pass


class Context:
    """What the service asks of grpc.aio's ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata, self.trailers, self.aborted = metadata, (), None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:10.0.0.7:40000"

    def set_trailing_metadata(self, trailers: Any) -> None:
        self.trailers = trailers

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted, self.trailers = (code, details), trailing_metadata
        raise Aborted(details)


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def observe(self, record: Any, route: str, method: str, status: int, seconds: float, client: Any, **extra: Any):
        self.calls.append((record.request_id, record.code, route, method, status, client, extra["grpc_code"]))


class Drain:
    active = False


def service(admission: Admission, observer: Observer, services: Any = None) -> InferenceService:
    return InferenceService(None, services, admission, Drain(), observer)  # type: ignore[arg-type]


def full_admission() -> Admission:
    return Admission(1, 10.0, 1 << 20, check_room=lambda model, n: None, draining=lambda: False, in_progress=1)


def infer(svc: InferenceService, context: Context) -> None:
    request = pb.ModelInferRequest(model_name="cnn")
    with pytest.raises(Aborted):
        asyncio.run(svc.ModelInfer(request, context))


def test_admission_refusal_is_unavailable_with_its_retry_after() -> None:
    observer, context = Observer(), Context((("x-request-id", "full-1"),))
    infer(service(full_admission(), observer), context)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.UNAVAILABLE
    assert "predictions in progress" in context.aborted[1]
    trailers = dict(context.trailers)
    assert trailers == {"x-request-id": "full-1", "digitserve-code": "overloaded", "retry-after": "1"}
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert observer.calls == [("full-1", "overloaded", route, "GRPC", 503, "10.0.0.7", "UNAVAILABLE")]


def test_a_bug_is_internal_and_says_only_which_request() -> None:
    class Broken:
        @property
        def pipeline(self) -> Any:
            raise RuntimeError("secret detail of a bug")

    admission = Admission(4, 10.0, 1 << 20, check_room=lambda model, n: None, draining=lambda: False)
    observer, context = Observer(), Context((("x-request-id", "bug-1"),))
    infer(service(admission, observer, Broken()), context)
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error; the server logged it as request bug-1")
    assert observer.calls[0][4] == 500 and observer.calls[0][6] == "INTERNAL"
    assert admission.in_progress == 0, "a failed call gives its slot back"


def test_a_cancelled_call_is_observed_as_the_client_leaving() -> None:
    class Slow:
        @property
        def pipeline(self) -> Any:
            raise asyncio.CancelledError  # as grpc.aio cancels the handler when the client goes

    admission = Admission(4, 10.0, 1 << 20, check_room=lambda model, n: None, draining=lambda: False)
    observer = Observer()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(service(admission, observer, Slow()).ModelInfer(pb.ModelInferRequest(model_name="cnn"), Context()))
    assert observer.calls[0][4] == 499 and observer.calls[0][6] == "CANCELLED"
    assert admission.in_progress == 0
