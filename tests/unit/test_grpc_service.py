"""How the gRPC service answers what it refuses (serving/grpc/service.py, calls.py), with a
stand-in for gRPC's servicer context: admission's 503 on arrival is UNAVAILABLE with its
`retry-after` and error code in the trailers; bytes that are no message, or metadata no codec
expects, are the client's mistake; a bug is INTERNAL with a message that names the request and
nothing else; and every call -- answered, refused or cancelled -- is observed once."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from digitserve.serving.grpc.proto import open_inference_pb2 as pb
from digitserve.serving.grpc.service import InferenceService
from digitserve.serving.http.admission import Admission

ROUTE = "/inference.GRPCInferenceService/ModelInfer"


class Aborted(Exception):
    pass


class Context:
    """What the service asks of grpc.aio's ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        self.metadata, self.trailers, self.aborted = metadata, (), None

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
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


def admission(in_progress: int = 0, limit: int = 4) -> Admission:
    checks: dict[str, Any] = {"check_room": lambda model, n: None, "draining": lambda: False}
    return Admission(limit, 10.0, 1 << 20, in_progress=in_progress, **checks)


def infer(admitted: Admission, observer: Observer, context: Context, raw: bytes, services: Any = None) -> None:
    rpc = InferenceService(services, admitted, Drain(), observer)._rpc("ModelInfer")  # type: ignore[arg-type]
    with pytest.raises(Aborted):
        asyncio.run(rpc(raw, context))


CNN = pb.ModelInferRequest(model_name="cnn").SerializeToString()


def test_admission_refusal_is_unavailable_with_its_retry_after() -> None:
    observer, context = Observer(), Context((("x-request-id", "full-1"),))
    infer(admission(in_progress=1, limit=1), observer, context, CNN)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.UNAVAILABLE
    assert "predictions in progress" in context.aborted[1]
    trailers = dict(context.trailers)
    assert trailers == {"x-request-id": "full-1", "digitserve-code": "overloaded", "retry-after": "1"}
    assert observer.calls == [("full-1", "overloaded", ROUTE, "GRPC", 503, "10.0.0.7", "UNAVAILABLE")]


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x01\xff", b"\x2a\x02\x0a"], ids=["junk", "utf8", "truncated"])
def test_bytes_that_are_no_message_are_invalid_argument(raw: bytes) -> None:
    """Junk, a model name that is not UTF-8, a truncated input: the client's mistake, observed."""
    observer, context = Observer(), Context()
    infer(admission(), observer, context, raw)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest message" in context.aborted[1]
    assert observer.calls[0][1] == "invalid_input" and observer.calls[0][4] == 422


def test_metadata_no_codec_expects_is_read_without_harm() -> None:
    """Text beyond Latin-1, bytes under a text key, an oversized sticky key: never UNKNOWN."""
    observer = Observer()
    context = Context((("x-user", "Łukasz ☃"), ("x-request-id", "Ωmega"), ("x-digitserve-sticky", "k" * 300)))
    infer(admission(), observer, context, CNN)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-digitserve-sticky metadata is over 256 characters" in context.aborted[1]
    assert observer.calls[0][0] != "Ωmega" and len(observer.calls[0][0]) == 32  # not a sane id: a new one


def test_a_long_message_is_cut_to_fit_a_trailer() -> None:
    observer, context = Observer(), Context()
    request = pb.ModelInferRequest(model_name="cnn", model_version="9" * 100_000)
    infer(admission(), observer, context, request.SerializeToString())
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.NOT_FOUND
    assert len(context.aborted[1]) < 200 and "positive integers" in context.aborted[1]


def test_a_bug_is_internal_and_says_only_which_request() -> None:
    class Broken:
        @property
        def pipeline(self) -> Any:
            raise RuntimeError("secret detail of a bug")

    admitted, observer, context = admission(), Observer(), Context((("x-request-id", "bug-1"),))
    infer(admitted, observer, context, CNN, Broken())
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error; the server logged it as request bug-1")
    assert observer.calls[0][4] == 500 and observer.calls[0][6] == "INTERNAL"
    assert admitted.in_progress == 0, "a failed call gives its slot back"


def test_a_cancelled_call_is_observed_as_the_client_leaving() -> None:
    class Slow:
        @property
        def pipeline(self) -> Any:
            raise asyncio.CancelledError  # as grpc.aio cancels the handler when the client goes

    admitted, observer = admission(), Observer()
    rpc = InferenceService(Slow(), admitted, Drain(), observer)._rpc("ModelInfer")  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(rpc(CNN, Context()))
    assert observer.calls[0][4] == 499 and observer.calls[0][6] == "CANCELLED"
    assert admitted.in_progress == 0
