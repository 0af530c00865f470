"""The HTTP limit: a bare FastAPI endpoint that does only what every prediction must.

Same route, same request model, same JSON response class and the same uvicorn settings as the
real server; it base64-decodes each image and answers a constant instead of decoding the PNG,
batching and running a model. What the real server loses against it is the price of its work.

    .venv/bin/python bench/bare_app.py --port 8001 [--workers 2] [--http limited] [--decode]

`--decode` also turns each image into the model's 28x28 input, as the server does (Pillow opens
the PNG, `imaging.mnist.prepare` frames it): every request's work but the model's. Performance
round three's limit of the machine is made of this endpoint's speed and the forward pass's.

`--http limited` serves it with digitserve's own HTTP protocol (serving/http/protocol.py: connection
cap, time and size limits, early refusals) instead of uvicorn's httptools protocol, which is how
bench/protocol_cost.py prices those limits.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from digitserve.imaging.mnist import prepare
from digitserve.serving.api.schemas import PredictRequest
from digitserve.serving.http.protocol import LimitedHttpProtocol
from digitserve.serving.responses import JSONResponse

HERE = Path(__file__).resolve().parent
ANSWER = {
    "label": 7,
    "confidence": 0.99,
    "top_k": [
        {"label": 7, "probability": 0.99},
        {"label": 1, "probability": 0.005},
        {"label": 2, "probability": 0.003},
    ],
    "probabilities": [0.0, 0.005, 0.003, 0.0, 0.0, 0.0, 0.0, 0.99, 0.0, 0.002],
    "model_input": None,
}


def create_bare_app(decode: bool = False) -> FastAPI:
    app = FastAPI(default_response_class=JSONResponse)

    @app.post("/v1/models/{model}/predict")
    async def predict(model: str, body: PredictRequest) -> JSONResponse:
        blobs = [base64.b64decode(s, validate=True) for s in body.images]
        if decode:
            for blob in blobs:
                prepare(blob, max_pixels=16_000_000)
        return JSONResponse(
            {"model": model, "version": 1, "alias": "production", "predictions": [ANSWER for _ in blobs]}
        )

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--http", choices=["httptools", "limited"], default="httptools")
    parser.add_argument("--decode", action="store_true", help="also decode each image to the model's input")
    args = parser.parse_args()
    # The settings of `digitserve serve` (cli.py): no access log, the same graceful shutdown.
    common = {
        "host": args.host,
        "port": args.port,
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "http": LimitedHttpProtocol if args.http == "limited" else "httptools",
    }
    if args.workers > 1:
        factory = "bare_app:create_decoding_app" if args.decode else "bare_app:create_bare_app"
        uvicorn.run(factory, factory=True, workers=args.workers, app_dir=str(HERE), **common)
    else:
        uvicorn.run(create_bare_app(args.decode), **common)


def create_decoding_app() -> FastAPI:
    return create_bare_app(decode=True)


if __name__ == "__main__":
    main()
