"""What an operator sees of the server (docs/observability.md):

- `requests.py`: every HTTP request followed: the observer the edge middleware calls when a request
  arrives and after its answer (metrics, the access-log line, spans);
- `record.py`: a request's record (its id, what it was answered, its stages), which the pipeline fills in;
- `logs.py`: JSON log lines (or text on a terminal), each with the request id it happened in;
- `tracing.py`: OpenTelemetry spans, only when an OTLP endpoint is set;
- `metrics.py`: the Prometheus metrics (one view across worker processes), labelled by route template;
- `answers.py`: what the models answer (labels, confidence, the inputs' ink) and the drift gauge;
- `loop.py`: the event loop's lag, measured inside the server (and the in-progress gauge's sampling).

May import `serving/http/` (route templates, request ids, the protocol's answers) and the layers
below `serving/`.
"""
