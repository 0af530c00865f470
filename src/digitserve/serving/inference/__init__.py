"""Inference: from MNIST-style pixels to calibrated probabilities, for every loaded version.

- `versions.py`: the one owner of loaded versions -- served (hot-swapped when the alias moves),
  canary and shadow beside it, pinned ones on demand; `state.py` what it holds per model;
- `batching.py`: the dynamic batcher of one version (no idle waiting, bounded queue, deadlines);
- `decoding.py`: a request's images decoded within pixel budgets, inline or in decode processes.

May import `serving/errors.py`, `serving/observability/`, `serving/workers.py` and the layers
below `serving/` (runtime, registry, imaging, config); never rollouts, the pipeline or the API.
"""
