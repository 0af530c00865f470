"""Request and response bodies of the /v1 API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from digitserve.registry.records import MAX_VERSION

# A real 28x28 MNIST "7" (test image 0) as a PNG, so "Try it out" in /docs works as-is.
EXAMPLE_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAwUlEQVR42mNgGDaAEUKFpD77sfTFHeyS9xQYGBg+X4UK"
    "Puk6w8DAwMDAAuGm6l/TMnSweCzLwPDntSTDozPIOhkYGBgYBA3PmDIw/Lh1XShnGi5nBP+9KIRLTuzl/2AokwlDMlv0"
    "/U1cGq1//rPD6fHWf7tZcclxnv1hhVNj3b9tOOW8f3+wxCUnfPffMlxyzKf/3VbGJan2758vLjn5B/+KGXF78Z8JLjnb"
    "T+iSSGFrw8Nw9wuKJAsy56LzO+ITGABpETyQcCy90wAAAABJRU5ErkJggg=="
)


def known_fields(cls: type[BaseModel], data: Any, fields: str) -> Any:
    """Refuse a body with fields the model does not have, naming the ones it has."""
    if isinstance(data, dict):
        unknown = [str(k)[:40] for k in data if k not in cls.model_fields][:5]
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; the fields are {fields}")
    return data


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": [EXAMPLE_PNG_B64], "top_k": 3}]},
    )

    images: list[str] = Field(
        default_factory=list,
        description="base64-encoded PNG, JPEG, WebP, BMP or GIF images; a `data:image/...;base64,` prefix is accepted",
    )
    csv: list[str] = Field(
        default_factory=list,
        description=(
            "digits as CSV text: 28 rows of 28 comma-separated pixel values (or one row of 784), an optional "
            "header row, integers 0-255 or decimals 0-1; predicted after `images`, in order"
        ),
    )
    top_k: int = Field(3, ge=1, le=10, description="how many of the most likely classes to return")
    return_input: bool = Field(False, description="also return the 28x28 image the model saw (PNG, base64)")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        return known_fields(
            cls, data, "images (base64 image files), csv (28x28 pixel CSV text), top_k and return_input"
        )


class ClassScore(BaseModel):
    label: int
    probability: float


class Prediction(BaseModel):
    label: int | None = Field(
        description="the predicted digit; null when the input does not look like a digit (unless ?abstain=false)"
    )
    is_digit: bool = Field(
        description="whether the input looks like a digit: false when no digit reaches the version's "
        "not-a-digit threshold (chosen on validation data, recorded in its manifest)"
    )
    reason: str | None = Field(None, description="why the input is not taken as a digit (when is_digit is false)")
    best_guess: int = Field(description="the most likely digit, whatever is_digit says")
    confidence: float = Field(
        description="the calibrated probability of the most likely digit: of answers given with 90% confidence, "
        "about 90% are right (on digits like MNIST's)"
    )
    top_k: list[ClassScore]
    probabilities: list[float] = Field(description="probability of each digit 0-9")
    model_input: str | None = Field(None, description="the 28x28 input as a base64 PNG (return_input)")


class PredictResponse(BaseModel):
    model: str
    version: int = Field(description="the registry version that computed these predictions")
    alias: str | None = Field(description="the alias that selected the version, if any")
    predictions: list[Prediction]


Digit = Annotated[StrictInt, Field(ge=0, le=9)]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"image": EXAMPLE_PNG_B64, "model": "cnn", "version": 1, "predicted": 1, "label": 7}]
        },
    )

    image: str = Field(
        description="the 28x28 model input a prediction returned (`return_input`), or the original image, which "
        "is preprocessed as a prediction's is; base64, a data: URL is fine. Only the 28x28 input is kept."
    )
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="the model whose answer this corrects")
    version: StrictInt = Field(ge=1, le=MAX_VERSION, description="the version that answered")
    predicted: Digit | Literal["not_a_digit"] | None = Field(
        description="what it answered: a digit, or null / 'not_a_digit' for 'not a digit'"
    )
    label: Digit | Literal["not_a_digit"] = Field(description="what it really is: a digit 0-9, or 'not_a_digit'")
    alias: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="the alias that answered, if the answer named one"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        return known_fields(cls, data, "image, model, version, predicted, label and alias")


class FeedbackResponse(BaseModel):
    id: str = Field(description="the sample's id: sha256 of model, 28x28 input and label")
    duplicate: bool = Field(description="this server already had the same image and label for this model")
    status: Literal["spooled"] = Field(
        description="written to the server's spool on disk; it reaches the registry within seconds while the "
        "registry is reachable, and waits (kept across restarts) while it is not"
    )
    review: Literal["pending"] = Field(description="every sample waits for a reviewer before training may use it")


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, and what to change")
    code: str


class ModelSummary(BaseModel):
    """What the server knows of one model: aliases, versions, the one serving, its health."""

    model_config = ConfigDict(extra="allow")

    name: str
    alias: str
    serving: dict[str, Any] | None
    ready: bool
    last_reload_error: dict[str, Any] | None
    aliases: dict[str, int]
    versions: list[dict[str, Any]]
    resident_versions: list[int]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in [
        (400, "malformed request: a body that cannot be parsed, or over a multipart file or field limit"),
        (404, "unknown model or version"),
        (413, "request or image too large"),
        (415, "unsupported image format"),
        (422, "invalid input (bad base64, not an image, no digit found, ...)"),
        (503, "overloaded, shutting down, or the model is not loaded yet (see Retry-After)"),
        (504, "the prediction did not finish before its deadline"),
    ]
}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined, for an `openapi_extra` request body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))
