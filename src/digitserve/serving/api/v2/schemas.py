"""Bodies of the /v2 Open Inference Protocol (KServe v2 / Triton HTTP), and what the models take.

Every model takes one of two inputs and produces two outputs:

- `pixels`: `UINT8` `[N, 28, 28]` (also `[N, 1, 28, 28]` or `[N, 784]`), MNIST-style white-on-black
  digits used as they are, no preprocessing. `FP32` is accepted too, in `[0, 1]`: it is scaled by
  255 and rounded to the model's 8-bit input. Values out of range are refused.
- `images`: `BYTES` `[N]`, encoded images (PNG, JPEG, ...) that go through the same preprocessing as
  `/v1`. In JSON each element is base64 (a `data:` URL is fine); as binary tensor data, raw bytes.
- outputs `probabilities` (`FP32` `[N, 10]`, calibrated), `label` (`INT64` `[N]`: the digit, or -1
  for an input that does not look like a digit) and `is_digit` (`BOOL` `[N]`). The request
  parameter `"abstain": false` makes `label` the most likely digit even then.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

PIXELS, IMAGES = "pixels", "images"
PROBABILITIES, LABEL, IS_DIGIT = "probabilities", "label", "is_digit"
OUTPUT_NAMES = (PROBABILITIES, LABEL, IS_DIGIT)
NOT_A_DIGIT_LABEL = -1  # `label` of an input that does not look like a digit (unless "abstain": false)
PIXEL_DATATYPES = ("UINT8", "FP32")
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "onnxruntime_onnx"

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParameterValue]
Dim = Annotated[int, Field(strict=True)]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the batch dimension")


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(description="registry versions, usable in /v2/models/{model}/versions/{version}")
    platform: str
    inputs: list[MetadataTensor] = Field(description="send exactly one of these per request")
    outputs: list[MetadataTensor]


INPUTS = [
    MetadataTensor(name=PIXELS, datatype="UINT8", shape=[-1, 28, 28]),
    MetadataTensor(name=IMAGES, datatype="BYTES", shape=[-1]),
]
OUTPUTS = [
    MetadataTensor(name=PROBABILITIES, datatype="FP32", shape=[-1, 10]),
    MetadataTensor(name=LABEL, datatype="INT64", shape=[-1]),
    MetadataTensor(name=IS_DIGIT, datatype="BOOL", shape=[-1]),
]


class RequestInput(BaseModel):
    name: str
    shape: list[Dim]
    datatype: str
    parameters: Parameters = Field(default_factory=dict)
    data: list[Any] | None = Field(None, description="row-major, flat or nested; absent for binary tensor data")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters = Field(
        default_factory=dict, description='{"binary_data": true} for binary tensor data, {"classification": k}'
    )


class InferRequest(BaseModel):
    """`$inference_request`; fields it does not define (such as `model_name`) are ignored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [{"name": IMAGES, "shape": [1], "datatype": "BYTES", "data": [EXAMPLE_PNG_B64]}],
                    "outputs": [{"name": LABEL}, {"name": PROBABILITIES}],
                }
            ]
        }
    )

    id: str | None = Field(None, description="echoed in the response")
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="default: every output, as JSON")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="the registry version that computed these outputs")
    id: str | None = None
    outputs: list[ResponseOutput]
