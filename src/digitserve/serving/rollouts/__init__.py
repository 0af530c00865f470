"""Safe rollouts: a canary that answers a share of the traffic, a shadow that runs unseen beside
production, and the judge that retires a canary doing worse than production (docs/rollouts.md).

- `following.py`: which version each rollout alias routes to (the rule, a pure function);
- `routing.py`: the request side -- which side answers, what each answer tells the watch;
- `watch.py`: the sliding window of each side and the judgement's thresholds;
- `judge.py`: the judgement every second, the retirement by alias CAS, the evidence published;
- `compare.py`, `background.py`: the comparisons of two versions on live inputs, after the answer
  and only with spare capacity, and the disagreement sample;
- `publisher.py`: each process's evidence in the registry.

May import `serving/inference/` (through the versions' public methods), `serving/observability/`,
`serving/errors.py` and the layers below `serving/`.
"""
