"""Requests generated from the app's own OpenAPI schema (schemathesis), valid and invalid, sent to a
real server: no 5xx, every status documented, bodies and content types as the schema says, and
schema-violating requests refused with a 4xx.

The schema comes from `create_app(...).openapi()` at import (no server needed to build the test
list), the requests go to a running `digitserve serve`. `positive_data_acceptance` is left out:
a string the schema allows in `images` is rarely a readable image, and 422 is then right.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from support.registries import copy_shipped
from support.server import start_server, stop_server

from digitserve.config import Settings
from digitserve.serving.app import create_app

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("DIGITSERVE_FUZZ_EXAMPLES", "25"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]
schema = schemathesis.openapi.from_dict(create_app(Settings(models=["cnn"], admin_token=None)).openapi())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    registry = copy_shipped(tmp_path_factory.mktemp("registry"))
    env = {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn", "DIGITSERVE_POLL_SECONDS": "3600"}
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    assert stop_server(process) == 0


def test_the_schema_documents_response_bodies() -> None:
    """Every JSON answer is documented by its model, not as a bare string (FastAPI's fallback)."""
    paths = schema.raw_schema["paths"]
    ok = paths["/v1/models/{model}/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictResponse"}
    assert "400" in paths["/v1/models/{model}/predict/upload"]["post"]["responses"]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests(case: schemathesis.Case, server: str) -> None:
    case.call_and_validate(base_url=server, checks=CHECKS, timeout=60)
