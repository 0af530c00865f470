"""The Open Inference Protocol (v2 REST) under /v2, for KServe and Triton clients: `routes.py`
(health, metadata, infer), `codec.py` (JSON and binary tensor bodies, compression), `tensors.py`
(inputs to pixels or images), `schemas.py`. The same pipeline as /v1; may import every room of
`serving/` but never read `app.state`."""
