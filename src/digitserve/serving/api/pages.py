"""The pages people open: the web page at `/`, the models pages under `/models`, their files
under `/static`, and Swagger UI at `/docs` -- all from the package (nothing from a CDN), with
headers that keep them from loading anything from elsewhere or being framed."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

STATIC = files("digitserve") / "static"
DOCS_ASSETS = "/docs/assets"
# The pages load nothing from elsewhere and may not be framed (a feedback button must not be clickjacked).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
DOCS_CSP = (  # Swagger UI: its own files, its one inline initialiser (by hash), and the inline styles React sets
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' {hashes}; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def mount_pages(app: FastAPI) -> None:
    """The web page at /, the models pages under /models, /static, and Swagger UI at /docs."""
    _mount_docs(app)
    if not STATIC.joinpath("index.html").is_file():
        return

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    # The models pages are one static page that reads the path: /models, /models/cnn/4, /models/compare.
    models_html = STATIC.joinpath("models.html").read_text(encoding="utf-8")

    @app.get("/models", include_in_schema=False, response_class=HTMLResponse)
    @app.get("/models/{path:path}", include_in_schema=False, response_class=HTMLResponse)
    async def models_page(path: str = "") -> HTMLResponse:
        return HTMLResponse(models_html, headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its files from the swagger-ui-bundle-v2 package: /docs works on a
    network without the internet, and no page of ours loads a script from elsewhere."""

    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
    ).body
    inline = [s for s in re.findall(rb"<script>(.*?)</script>", page, re.S)]  # FastAPI's one initialiser
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
    headers = {**PAGE_HEADERS, "Content-Security-Policy": DOCS_CSP.format(hashes=hashes)}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
