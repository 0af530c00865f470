"""A JSON response rendered by orjson (numpy-aware), used for every /v1 and /v2 answer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    """A subclass of Starlette's, so FastAPI documents each route's response model in the OpenAPI
    schema (for any other response class it documents the body as a plain string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
