"""The prediction routes, named once: the routers are declared with these templates, and
admission, the body limits and the metrics recognise a request by matching its path against
the same table (before FastAPI has routed it, or when it never will: a refusal on arrival)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

V1_PREDICT = "/v1/models/{model}/predict"
V1_UPLOAD = "/v1/models/{model}/predict/upload"
V2_INFER = "/v2/models/{model}/infer"
V2_VERSION_INFER = "/v2/models/{model}/versions/{version}/infer"
V1_FEEDBACK = "/v1/feedback"
PREDICTIONS = (V1_PREDICT, V1_UPLOAD, V2_INFER, V2_VERSION_INFER)
PINNING = frozenset({"version", "alias"})  # query parameters that choose the version themselves
MATCHED = "digitserve.prediction"  # request state: the prediction route matched once (a Prediction or None)


class Prediction(NamedTuple):
    """A request to one of the prediction routes."""

    model: str
    template: str
    pinned: bool  # it names its version (?version=, ?alias=, /versions/{n}/): judged when queued


def _shape(template: str) -> tuple[tuple[str, ...], frozenset[int]]:
    parts = template.split("/")
    params = frozenset(i for i, part in enumerate(parts) if part.startswith("{"))
    return tuple("*" if i in params else part for i, part in enumerate(parts)), params


_SHAPES = {_shape(t)[0]: t for t in PREDICTIONS}
_PARAMS = sorted({_shape(t)[1] for t in PREDICTIONS}, key=len)  # the parameter positions there are
_MODEL = 3  # /v?/models/{model}/...


def match_prediction(path: str, query: bytes | str = b"") -> Prediction | None:
    """The prediction route of a raw path (and its query), or None for any other path. A path with
    one trailing newline is the route too, as the router's patterns (`...$`) take it."""
    parts = path.removesuffix("\n").split("/")
    for params in _PARAMS:
        if max(params) >= len(parts) or not all(parts[i] for i in params):
            continue
        template = _SHAPES.get(tuple("*" if i in params else part for i, part in enumerate(parts)))
        if template is not None:
            return Prediction(parts[_MODEL], template, len(params) > 1 or _pins(query))
    return None


def _pins(query: bytes | str) -> bool:
    if not query:
        return False
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    return any(key in PINNING for key, _ in parse_qsl(text, keep_blank_values=True))


def prediction_of(scope: MutableMapping[str, Any]) -> Prediction | None:
    """The prediction route of an ASGI request, matched once (by the protocol, or on first use)."""
    state = scope.setdefault("state", {})
    if MATCHED not in state:
        state[MATCHED] = match_prediction(scope["path"], scope["query_string"]) if scope["method"] == "POST" else None
    found: Prediction | None = state[MATCHED]
    return found
