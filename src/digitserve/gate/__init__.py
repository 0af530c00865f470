"""The promotion gate: a version takes an alias only if it measures up on the MNIST test set.

The gate trusts no recorded number. It loads the candidate's ONNX artifact through the
registry (sha256-verified) -- what a server will run -- and re-evaluates it on the full official
test set. It refuses the candidate when its accuracy is below the model's threshold, more than
`MAX_REGRESSION` below the version the alias holds now (re-measured the same way), or when the
ONNX artifact and the torch weights it was exported from disagree on any test label or by more
than `AGREEMENT_ATOL` in any logit.

It also checks that the candidate's answers can be trusted (`TrustLimits`), with the
calibration and not-a-digit threshold its manifest records, applied as a server applies them:
test-set ECE (15 bins) at most 1.5%; at most 0.3% of MNIST test digits answered "not a digit";
at least 95% of the project's held-out negatives answered "not a digit". A version that records
no calibration or threshold is refused. `--force --reason` bypasses the gate, and the event log
says so.

`core.py` (accuracy, regression, ONNX/torch agreement), `trust.py` (calibration and not-a-digit
limits), `feedback.py` (the feedback holdout), `promotion.py` (`promote`), `rollout.py` (promotion
from a canary's live evidence). May import config, storage, registry, runtime, data, evaluation,
synthetic and models (torch only inside the agreement check).
"""

from digitserve.gate.core import (
    AGREEMENT_ATOL,
    DEFAULT_THRESHOLDS,
    MAX_REGRESSION,
    GateRefusedError,
    GateResult,
    Measurement,
    PromotionGate,
    measure,
    resolve_threshold,
    torch_logits,
)
from digitserve.gate.promotion import Promotion, promote, promote_newest_passing
from digitserve.gate.rollout import EvidenceLimits, Verdict, judge_evidence, promote_from
from digitserve.gate.trust import Trust, TrustLimits, measure_trust, trust_refusals

__all__ = [
    "AGREEMENT_ATOL",
    "DEFAULT_THRESHOLDS",
    "MAX_REGRESSION",
    "EvidenceLimits",
    "GateRefusedError",
    "GateResult",
    "Measurement",
    "Promotion",
    "PromotionGate",
    "Trust",
    "TrustLimits",
    "Verdict",
    "judge_evidence",
    "measure",
    "measure_trust",
    "promote",
    "promote_from",
    "promote_newest_passing",
    "resolve_threshold",
    "torch_logits",
    "trust_refusals",
]
