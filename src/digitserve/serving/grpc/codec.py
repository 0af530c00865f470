"""The gRPC wire format of the Open Inference Protocol: a `ModelInferRequest` to model input, and
predictions to a `ModelInferResponse`.

Inputs are checked by the same functions as `/v2` REST (serving/api/v2/tensors.py), so a request
means the same and is refused with the same message on either transport. An input's elements come
either as `raw_input_contents` (one entry per input: little-endian row-major values; BYTES
elements each a 4-byte little-endian length and the bytes -- what tritonclient sends) or in the
typed `contents` field of its datatype. Outputs are sent as `raw_output_contents`, as Triton does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitserve.config import RequestLimits
from digitserve.serving.api.v2.codec import (
    SEND_IMAGES,
    SEND_PIXELS,
    DecodedRequest,
    flag,
    output_values,
    refuse_shared_memory,
    requested_outputs,
    tensor_bytes,
)
from digitserve.serving.api.v2.schemas import IMAGES, PIXELS, InferRequest, Parameters, RequestInput, RequestOutput
from digitserve.serving.api.v2.tensors import decode_images, decode_pixels, image_elements, pixels_count
from digitserve.serving.errors import InvalidInputError, quoted
from digitserve.serving.grpc.proto.open_inference_pb2 import InferTensorContents, ModelInferRequest, ModelInferResponse
from digitserve.serving.pipeline import PredictionResult

# The typed field of each datatype (InferTensorContents), as the protocol assigns them.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
RAW_BYTES = "raw_input_contents"


def parameters(entries: Any) -> Parameters:
    """A protobuf `map<string, InferParameter>` as the plain values REST's parameters hold."""
    values: Parameters = {}
    for key, parameter in entries.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInputError(f"parameter {quoted(key)} has no value; set one of its parameter_choice fields")
        values[key] = getattr(parameter, choice)
    return values


def read_infer(request: ModelInferRequest, limits: RequestLimits) -> DecodedRequest:
    """The request's one input as model input, its requested outputs and its parameters."""
    if len(request.inputs) != 1:
        names = ", ".join(quoted(i.name) for i in request.inputs[:4]) + (", ..." if len(request.inputs) > 4 else "")
        raise InvalidInputError(f"send exactly one input, {SEND_PIXELS} or {SEND_IMAGES}; got [{names}]")
    raws = len(request.raw_input_contents)
    if raws > 1:
        raise InvalidInputError(f"{RAW_BYTES} has {raws} entries; send one per input (one input)")
    message = request.inputs[0]
    given = parameters(message.parameters)
    tensor = RequestInput.model_construct(
        name=message.name, shape=list(message.shape), datatype=message.datatype, parameters=given
    )
    refuse_shared_memory(tensor.parameters)
    if tensor.name not in (PIXELS, IMAGES):
        raise InvalidInputError(f"unknown input {quoted(tensor.name)}; send {SEND_PIXELS} or {SEND_IMAGES}")
    if raws:
        if message.HasField("contents"):
            raise InvalidInputError(f"input {tensor.name!r} has both contents and {RAW_BYTES}; send one")
        raw = request.raw_input_contents[0]
        taken = decode_pixels(tensor, raw, limits) if tensor.name == PIXELS else decode_images(tensor, raw, limits)
    else:
        elements = _typed_elements(tensor, message.contents)
        if tensor.name == PIXELS:  # a flat array, checked as REST's JSON data is, once its size is right
            where, count = f"contents.{CONTENTS_FIELD[tensor.datatype]}", pixels_count(tensor, limits) * 28 * 28
            if len(elements) != count:
                found = len(elements)
                raise InvalidInputError(f"input {PIXELS!r} has {found} values in {where}; its shape takes {count}")
            values = tensor.model_copy(update={"data": np.asarray(elements)})
            taken = decode_pixels(values, None, limits, where=where)
        else:
            taken = image_elements(tensor, list(elements), limits)
    outputs = [RequestOutput.model_construct(name=o.name, parameters=parameters(o.parameters)) for o in request.outputs]
    infer = InferRequest.model_construct(
        id=request.id or None, parameters=parameters(request.parameters), inputs=[tensor], outputs=outputs or None
    )
    abstain = flag(infer.parameters, "abstain", True)
    if isinstance(taken, list):
        return DecodedRequest(infer, None, taken, requested_outputs(infer), abstain)
    return DecodedRequest(infer, taken, None, requested_outputs(infer), abstain)


def _typed_elements(tensor: RequestInput, contents: InferTensorContents) -> Any:
    """The input's elements from the typed field of its datatype (and no other field)."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:  # FP16, BF16 (raw only), or no datatype at all
        raise InvalidInputError(
            f"input {tensor.name!r} has datatype {quoted(tensor.datatype)}, which has no contents field; "
            f"send UINT8 or FP32 pixels, or BYTES images"
        )
    stray = [f.name for f, _ in contents.ListFields() if f.name != field]
    if stray:
        raise InvalidInputError(
            f"input {tensor.name!r} is {tensor.datatype}: send its elements in contents.{field} "
            f"(or {RAW_BYTES}), not in contents.{stray[0]}"
        )
    return getattr(contents, field)


def render_infer(decoded: DecodedRequest, result: PredictionResult, request_id: str) -> ModelInferResponse:
    """The response: every requested output as raw bytes. Its `id` is the request's, else the
    request id (the client's `x-request-id`, or the server's)."""
    response = ModelInferResponse(
        model_name=result.loaded.model,
        model_version=str(result.loaded.version),
        id=decoded.request.id if decoded.request.id is not None else request_id,
    )
    for spec in decoded.outputs:
        values, datatype = output_values(spec, result, decoded.abstain)
        response.outputs.add(name=spec.name, datatype=datatype, shape=values.shape)
        response.raw_output_contents.append(tensor_bytes(values))
    return response
