"""The /v1 JSON API: `predict.py` (JSON and multipart predictions), `models.py` (what is served),
`registry.py` (the models pages' JSON and `/v1/live`), `feedback.py` (corrections), `admin.py`
(reload). Routes translate and call the services they get from `serving/deps.py`; they may import
every room of `serving/` but never read `app.state`."""
