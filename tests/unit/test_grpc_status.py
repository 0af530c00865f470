"""Every refusal the service can make has a gRPC status of its own (serving/grpc/calls.py):
none of them reaches a gRPC client as INTERNAL, which the hostile tests treat as a bug."""

from __future__ import annotations

import grpc

from digitserve.imaging.decode import ImageError, TooManyPixelsError, UnsupportedFormatError
from digitserve.serving.errors import ServiceError, http_error
from digitserve.serving.grpc.calls import STATUS, peer_host


def subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def test_every_refusal_has_a_grpc_status() -> None:
    errors = subclasses(ServiceError)
    assert len(errors) >= 15
    for error in errors:
        assert error.status_code in STATUS, f"{error.__name__} ({error.status_code}) would be INTERNAL over gRPC"
    for image_error in (ImageError, TooManyPixelsError, UnsupportedFormatError):
        answer = http_error(image_error.__new__(image_error))
        assert answer is not None and answer.status in STATUS
    assert all(code != grpc.StatusCode.INTERNAL for code in STATUS.values())
    assert STATUS[503] == grpc.StatusCode.UNAVAILABLE  # what gRPC clients retry
    assert STATUS[413] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_peer_addresses() -> None:
    assert peer_host("ipv4:10.1.2.3:5000") == "10.1.2.3"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("ipv6:%5B::ffff:10.0.0.2%5D:5000") == "::ffff:10.0.0.2"  # grpcio percent-encodes
    assert peer_host("unix:/tmp/socket") is None
