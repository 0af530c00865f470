"""The wire protocols: routes that translate a request into calls on the services and the result
back, and nothing more.

- `v1/`: `predict.py` (JSON and multipart), `direct.py` (plain JSON predictions, past FastAPI's
  routing), `models.py` (`GET /v1/models`), `registry.py` (the
  models pages' JSON and `/v1/live`), `feedback.py`, `admin.py` (reload);
- `v2/`: the Open Inference Protocol (KServe, Triton): `routes.py`, `codec.py` (JSON and binary
  tensors), `tensors.py`, `schemas.py`;
- `health.py`: `/healthz`, `/readyz`, `/metrics`; `schemas.py`: the /v1 bodies and examples;
  `handlers.py`: the exception handlers.

May import every other room of `serving/`; services only through `serving/deps.py`.
"""
