"""The peer: LitServe serving the same registry version, as a new LitServe user would write it.

Same body (`{"images": [base64 PNG]}`), same decoding and preprocessing (`digitserve.imaging.mnist`),
the same ONNX artifact under ONNX Runtime with the same thread count, the same JSON answer, and
the batching the issue names: 64 images, 2 ms. LitServe runs the model in its own worker process
and its API server in another; /health answers once the model is loaded.

    .venv/bin/python bench/litserve_app.py --registry /tmp/reg --model cnn --port 8002
"""

import argparse
import base64
from typing import Any  # no `from __future__ import annotations`: LitServe reads the real annotations

import litserve as ls
import numpy as np

from digitserve.imaging.mnist import prepare
from digitserve.registry import ModelRegistry
from digitserve.runtime import RuntimeOptions, load_servable


class DigitAPI(ls.LitAPI):
    def __init__(self, registry: str, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry_uri, self.model = registry, model

    def setup(self, device: str) -> None:
        registry = ModelRegistry.open(self.registry_uri)
        version = registry.resolve_alias(self.model, "production")
        self.servable = load_servable(registry, self.model, version, RuntimeOptions())

    def decode_request(self, request: dict[str, Any]) -> np.ndarray:
        return prepare(base64.b64decode(request["images"][0], validate=True))  # (28, 28) uint8

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.servable.probabilities(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        probs = [round(float(p), 6) for p in output]
        order = np.argsort(-output)[:3].tolist()
        top = [{"label": c, "probability": probs[c]} for c in order]
        prediction = {"label": top[0]["label"], "confidence": top[0]["probability"], "top_k": top,
                      "probabilities": probs, "model_input": None}  # fmt: skip
        return {"model": self.model, "version": self.servable.version, "alias": "production",
                "predictions": [prediction]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    api = DigitAPI(args.registry, args.model, max_batch_size=64, batch_timeout=0.002,
                   api_path=f"/v1/models/{args.model}/predict")  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", devices=1, healthcheck_path="/readyz")
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
