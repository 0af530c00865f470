"""The background side of a shadow or canary comparison: the second version's forward pass and the
count of agreement, in a thread that runs only on CPU nobody else wants.

Each version compared gets a session of its own here (one intra-op thread, built once from its
verified graph, kept in a small cache), so the comparison never shares the served session's
threads. A batch brings the pixels and the probabilities already answered; it leaves with the
counts of agreement per production answer, which is all the event loop has left to add up.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from digitserve.registry.evidence import CLASSES, PerClass, count_agreement
from digitserve.runtime.calibration import Calibration
from digitserve.runtime.session import OnnxModel, RuntimeOptions

NICE = 19
MAX_GRAPHS = 4
_sessions: OrderedDict[str, OnnxModel] = OrderedDict()  # sha256 -> the comparison's own session


def lower_priority() -> None:
    """The comparison thread's initializer: it runs only on CPU nobody else wants (SCHED_IDLE on
    Linux, which applies to the calling thread: preempted at once by any ordinary task), else at
    the lowest nice."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def background_pool() -> ThreadPoolExecutor:
    """The comparison thread: one, at the lowest priority."""
    return ThreadPoolExecutor(1, thread_name_prefix="compare", initializer=lower_priority)


def answer_names(probabilities: np.ndarray, calibration: Calibration) -> list[str]:
    """Each input's answer as a class name: the digit, or "not_a_digit"."""
    is_digit = calibration.is_digit(probabilities)
    labels = probabilities.argmax(axis=1)
    return [str(int(label)) if digit else CLASSES[-1] for label, digit in zip(labels, is_digit, strict=True)]


@dataclass(frozen=True)
class Other:
    """The version a comparison runs: its graph (by sha256; the bytes only when the process lacks them)."""

    sha256: str
    graph: bytes | None
    temperature: float
    threshold: float | None


class Compared(NamedTuple):
    """Both versions' answers to a batch (class names), counted per production answer."""

    production: list[str]
    candidate: list[str]
    per_class: PerClass
    disagree: list[int]  # indices where the two answered differently


def compare_batch(
    other: Other,
    images: np.ndarray,
    answered: np.ndarray,
    answered_threshold: float | None,
    answered_is_production: bool,
) -> Compared | None:
    """In the comparison thread: `other`'s answers for `images`, set against the answers given
    (`answered`: their calibrated probabilities), counted per production answer."""
    session = _sessions.get(other.sha256)
    if session is None:
        if other.graph is None:
            return None
        session = _sessions[other.sha256] = OnnxModel(other.graph, RuntimeOptions(intra_op_threads=1))
        while len(_sessions) > MAX_GRAPHS:
            _sessions.popitem(last=False)
    _sessions.move_to_end(other.sha256)
    calibration = Calibration(other.temperature, other.threshold)
    theirs = answer_names(calibration.probabilities(session.logits(images)), calibration)
    mine = answer_names(answered, Calibration(1.0, answered_threshold))
    production, candidate = (mine, theirs) if answered_is_production else (theirs, mine)
    per_class, disagree = count_agreement(production, candidate)
    return Compared(production, candidate, per_class, disagree)
