"""Feedback intake: a person's correction taken without ever slowing a prediction.

- `service.py`: what happens to a correction, in order (rate limit, model, image, version, spool);
- `limits.py`: the per-client token bucket, keyed by network;
- `spool.py`: samples on local disk until the registry has them, and the writer that moves them.

May import `serving/errors.py` and the registry; the rest of the server reaches it through the
callables `services.py` gives it.
"""
