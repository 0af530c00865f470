"""The edge recognises a prediction (admission, body limits, the direct path, metrics) by matching
its raw path against serving/http/routes.py's table, before the router has seen it. Every path the
router sends to a prediction route must be recognised, or a request could skip admission's cap and
its deadline: Starlette's patterns end in `$`, which also matches before one trailing newline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from starlette.routing import BaseRoute, Match

from digitserve.config import Settings, shipped_registry
from digitserve.serving.app import create_app
from digitserve.serving.http.routes import PREDICTIONS, match_prediction


def flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes in the order the router tries them, included routers opened."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from flat(included.routes) if included is not None else [route]


PATHS = [
    "/v1/models/cnn/predict",
    "/v1/models/cnn/predict\n",
    "/v1/models/cnn/predict\n\n",
    "/v1/models/cn\nn/predict",
    "/v1/models/cnn/predict/upload\n",
    "/v2/models/cnn/infer\n",
    "/v2/models/cnn/versions/1/infer\n",
    "/v2/models/cnn/versions/1\n/infer",
    "/v1/models//predict",
    "/v1/models/cnn/predict/",
    "\n/v1/models/cnn/predict",
    "/v1/models/cnn/predict\r",
    "/v1/models/cnn",
]


@pytest.mark.parametrize("path", PATHS, ids=[repr(p) for p in PATHS])
def test_the_edge_recognises_every_path_the_router_sends_to_a_prediction(path: str) -> None:
    app = create_app(Settings(registry=str(shipped_registry()), models=["cnn"]))
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "query_string": b""}
    routed = next(
        (getattr(route, "path", None) for route in flat(app.router.routes) if route.matches(scope)[0] == Match.FULL),
        None,
    )
    recognised = match_prediction(path)
    assert (recognised.template if recognised else None) == (routed if routed in PREDICTIONS else None)
    if recognised is not None:
        assert recognised.model == path.split("/")[3], "the model the route's path parameter holds"
