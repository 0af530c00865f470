"""The server: FastAPI over ONNX Runtime, in rooms that each own one concept.

- `app.py` assembles the app; `services.py` is the composition root (builds, owns and closes
  every executor, thread, task and service, in a written shutdown order); `deps.py` hands the
  services to routes (the only reader of `app.state`); `pipeline.py` is the request path,
  written once for every protocol; `errors.py` the errors and their HTTP answers (a leaf);
  `responses.py` the JSON response; `workers.py` a group of worker processes acting as one.
- `http/`: below FastAPI -- the HTTP protocol's connection limits, admission on arrival, the one
  middleware, the route table, the SIGTERM drain.
- `inference/`: the loaded versions (one owner), the dynamic batcher, decoding within budgets.
- `rollouts/`: canary routing, its watch and judge, background comparisons, published evidence.
- `feedback/`: people's corrections: rate limit, spool, the service the route calls.
- `browsing/`: what the registry holds, for `GET /v1/models` and the models pages.
- `observability/`: the Prometheus metrics.
- `api/`: the wire protocols -- `v1/` (JSON, multipart, models, registry pages, feedback, admin),
  `v2/` (the Open Inference Protocol), `health.py` -- which only translate into the services.

Imports point one way (tests/unit/test_architecture.py, `ROOMS`, checks it): `errors.py` is a
leaf; `http` uses `errors`; `observability` uses `http`'s route table; `inference` uses `errors`
and `observability`; `rollouts` and `browsing` use `inference` too; `feedback` uses `errors`
alone; `pipeline` uses `inference` and `rollouts`; `services`, `deps`, `api` and `app` sit on top,
in that order. Every room may use the layers below `serving/`.
"""
