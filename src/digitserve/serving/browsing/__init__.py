"""What the registry holds, read for people: `GET /v1/models`, `/v2` metadata and the models pages.

- `catalog.py`: each model's versions, aliases and feedback accuracy, cached between reads;
- `browser.py`: versions as cards, alias histories, report files, test samples (in its own threads);
- `analysis.py`: a confusion-matrix cell's digits and two versions compared digit by digit;
- `live.py`: the server's own numbers for the live view, from the shared metrics.

May import `serving/errors.py`, `serving/observability/`, `serving/inference/` (read-only: which
version serves) and the layers below `serving/`.
"""
