"""The /v2 wire format: from a request body to model input, and from probabilities to a response.

Handles the JSON tensor form (flat or nested `data`), the binary tensor data extension (JSON
header of `Inference-Header-Content-Length` bytes, then each binary tensor in order; `BYTES`
elements are a 4-byte little-endian length and the bytes), gzip/deflate request bodies, and the
classification extension. Every problem is a typed 4xx error that says what to send instead.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from digitserve.config import RequestLimits
from digitserve.serving.api.v2.schemas import (
    IMAGES,
    IS_DIGIT,
    LABEL,
    NOT_A_DIGIT_LABEL,
    OUTPUT_NAMES,
    PIXELS,
    PROBABILITIES,
    InferRequest,
    Parameters,
    RequestInput,
)
from digitserve.serving.api.v2.tensors import decode_images, decode_pixels
from digitserve.serving.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError, quoted
from digitserve.serving.pipeline import PredictionResult

HEADER_LENGTH = "Inference-Header-Content-Length"
SEND_PIXELS = f"{PIXELS!r} (UINT8 0..255 or FP32 0..1, [N, 28, 28], [N, 1, 28, 28] or [N, 784])"
SEND_IMAGES = f"{IMAGES!r} (BYTES [N]: encoded PNG/JPEG/... images, base64 in JSON)"
INLINE_BODY_BYTES = 256 * 1024  # larger (or compressed) bodies are parsed off the event loop


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool
    classification: int = 0  # top-k "probability:class" strings instead of the probabilities


@dataclass(frozen=True)
class DecodedRequest:
    request: InferRequest
    pixels: np.ndarray | None  # (n, 28, 28) uint8 from `pixels`, used as sent
    images: list[bytes] | None  # encoded images from `images`, preprocessed like /v1
    outputs: list[OutputRequest]
    abstain: bool = True  # `label` -1 for what does not look like a digit

    @property
    def count(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.images or ())


# --- request -------------------------------------------------------------------------------


async def read_request(body: bytes, headers: Mapping[str, str], limits: RequestLimits) -> DecodedRequest:
    """Parse an inference request body; large or compressed bodies are parsed off the event loop."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    header_length = headers.get(HEADER_LENGTH)
    if encoding != "identity" or len(body) > INLINE_BODY_BYTES:
        request, taken = await asyncio.to_thread(_decode, body, encoding, header_length, limits)
    else:
        request, taken = _decode(body, encoding, header_length, limits)
    outputs = requested_outputs(request)
    abstain = flag(request.parameters, "abstain", True)
    if isinstance(taken, list):
        return DecodedRequest(request, None, taken, outputs, abstain)
    return DecodedRequest(request, taken, None, outputs, abstain)


def _decode(
    body: bytes, encoding: str, header_length: str | None, limits: RequestLimits
) -> tuple[InferRequest, np.ndarray | list[bytes]]:
    if encoding != "identity":
        body = decompress(body, encoding, limits.max_body_bytes)
    request, tail = split_body(body, header_length)
    return request, take_input(request, tail, limits)


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """gzip or deflate (zlib) body -> bytes, refusing more than `max_bytes` of output."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"the decompressed body is over the {max_bytes} byte limit")
    if not inflater.eof:
        raise InvalidInputError(f"the {encoding} body is truncated")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The JSON inference request, and the binary tensor data that follows it (if any)."""
    head, tail = body, b""
    if header_length is not None:
        digits = header_length.strip()
        size = int(digits) if digits.isdecimal() and len(digits) <= 12 else -1
        if not 0 < size <= len(body):
            raise InvalidInputError(
                f"{HEADER_LENGTH} is {header_length!r}; it must be the JSON header's size, "
                f"between 1 and the body's {len(body)} bytes"
            )
        head, tail = body[:size], body[size:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"the inference request is not valid JSON: {exc}") from None
    try:
        return InferRequest.model_validate(doc), tail
    except ValidationError as exc:  # answered like any other invalid body, naming the fields
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def take_input(request: InferRequest, tail: bytes, limits: RequestLimits) -> np.ndarray | list[bytes]:
    """The request's one input: (n, 28, 28) uint8 pixels, or the encoded images of `images`."""
    if len(request.inputs) != 1:
        names = ", ".join(quoted(i.name) for i in request.inputs[:4]) + (", ..." if len(request.inputs) > 4 else "")
        raise InvalidInputError(f"send exactly one input, {SEND_PIXELS} or {SEND_IMAGES}; got [{names}]")
    tensor = request.inputs[0]
    raw = _binary_data(tensor, tail)
    if tensor.name == PIXELS:
        return decode_pixels(tensor, raw, limits)
    if tensor.name == IMAGES:
        return decode_images(tensor, raw, limits)
    raise InvalidInputError(f"unknown input {quoted(tensor.name)}; send {SEND_PIXELS} or {SEND_IMAGES}")


def _binary_data(tensor: RequestInput, tail: bytes) -> bytes | None:
    refuse_shared_memory(tensor.parameters)
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if tail:
            raise InvalidInputError(f"{len(tail)} bytes follow the JSON header, but no input has a binary_data_size")
        if tensor.data is None:
            raise InvalidInputError(f"input {tensor.name!r} has neither data nor a binary_data_size")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}")
    if tensor.data is not None:
        raise InvalidInputError(f"input {tensor.name!r} has both data and a binary_data_size; send one")
    if size != len(tail):
        raise InvalidInputError(
            f"input {tensor.name!r} has binary_data_size {size}, but {len(tail)} bytes follow the JSON header "
            f"(set {HEADER_LENGTH} to the JSON header's size)"
        )
    return tail


def refuse_shared_memory(parameters: Parameters) -> None:
    if any(key.startswith("shared_memory") for key in parameters):
        raise InvalidInputError("shared memory is not supported; send the tensor data in the request")


def requested_outputs(request: InferRequest) -> list[OutputRequest]:
    """The outputs to send, in the order asked (default: all), each as JSON or binary."""
    binary_default = flag(request.parameters, "binary_data_output", False)
    if not request.outputs:
        return [OutputRequest(name, binary_default) for name in OUTPUT_NAMES]
    outputs: list[OutputRequest] = []
    for out in request.outputs:
        if out.name not in OUTPUT_NAMES:
            known = ", ".join(map(repr, OUTPUT_NAMES))
            raise InvalidInputError(f"unknown output {quoted(out.name)}; outputs are {known}")
        if any(o.name == out.name for o in outputs):
            raise InvalidInputError(f"output {out.name!r} is requested twice")
        refuse_shared_memory(out.parameters)
        classes = out.parameters.get("classification", 0)
        if isinstance(classes, bool) or not isinstance(classes, int) or not 0 <= classes <= 10:
            raise InvalidInputError(f"output {out.name!r}: classification must be a class count 1..10")
        if classes and out.name != PROBABILITIES:
            raise InvalidInputError(f"classification applies to 'probabilities', not {out.name!r}")
        outputs.append(OutputRequest(out.name, flag(out.parameters, "binary_data", binary_default), classes))
    return outputs


def flag(parameters: Parameters, key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInputError(f"parameter {key!r} must be true or false, got {quoted(value)}")
    return value


# --- response ------------------------------------------------------------------------------


def render_response(decoded: DecodedRequest, result: PredictionResult, request_id: str | None = None) -> Response:
    """The inference response: JSON, or the JSON header and binary tensors when any output is binary.
    Its `id` is the request's, else the request's `X-Request-ID` (the client's or the server's)."""
    header: dict[str, Any] = {"model_name": result.loaded.model, "model_version": str(result.loaded.version)}
    identity = decoded.request.id if decoded.request.id is not None else request_id
    if identity is not None:
        header["id"] = identity
    tensors, blobs = [], []
    for spec in decoded.outputs:
        values, datatype = output_values(spec, result, decoded.abstain)
        tensor: dict[str, Any] = {"name": spec.name, "shape": list(values.shape), "datatype": datatype}
        if spec.binary:
            blob = tensor_bytes(values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = [b.decode() for b in values.ravel()] if datatype == "BYTES" else values.ravel()
        tensors.append(tensor)
    header["outputs"] = tensors
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(blobs), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))}
    )


def output_values(spec: OutputRequest, result: PredictionResult, abstain: bool) -> tuple[np.ndarray, str]:
    probs = result.probabilities
    if spec.name == IS_DIGIT:
        return result.is_digit.astype(np.bool_), "BOOL"  # (N,)
    if spec.name == LABEL:
        labels = probs.argmax(axis=1).astype("<i8")  # (N,)
        if abstain:
            labels[~result.is_digit] = NOT_A_DIGIT_LABEL
        return labels, "INT64"
    if spec.classification:
        top = np.argsort(-probs, axis=1, kind="stable")[:, : spec.classification]  # (N, k)
        rows = [[f"{probs[i, c]:.6f}:{c}".encode() for c in row] for i, row in enumerate(top)]
        return np.array(rows, dtype=object), "BYTES"
    return np.ascontiguousarray(probs, dtype="<f4"), "FP32"  # (N, 10)


def tensor_bytes(values: np.ndarray) -> bytes:
    if values.dtype == object:
        return b"".join(struct.pack("<I", len(b)) + b for b in values.ravel())
    return values.tobytes()
