"""What the models answer as metrics (serving/observability/answers.py), the drift reference
(runtime/reference.py), request ids and JSON log lines (serving/observability/logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from digitserve.config import Observability
from digitserve.registry import ModelRegistry
from digitserve.registry.records import dumps
from digitserve.runtime.reference import ANSWERS, CONFIDENCE_BUCKETS, AnswerReference, js_divergence
from digitserve.serving.http.request_id import request_id_from
from digitserve.serving.observability.answers import (
    FLUSH_IMAGES,
    MIN_ANSWERS,
    AnswerMetrics,
    ink_statistics,
    observe_many,
)
from digitserve.serving.observability.logs import current_request, logging_config
from digitserve.storage import RegistryError

RNG = np.random.default_rng(0)


def confident(labels: list[int], confidence: float = 0.995) -> np.ndarray:
    probabilities = np.full((len(labels), 10), (1 - confidence) / 9, np.float32)
    probabilities[np.arange(len(labels)), labels] = confidence
    return probabilities


def digits_reference(n: int = 5000) -> AnswerReference:
    probabilities = confident(list(RNG.integers(0, 10, n)))
    return AnswerReference.measure(probabilities, np.ones(n, bool), "test")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_observe_many_equals_observing_one_by_one() -> None:
    values = np.concatenate([RNG.random(500), [0.3, 0.5, 1.0, 0.0]])  # bucket edges too
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=CONFIDENCE_BUCKETS, registry=one)
    h2 = Histogram("h", "h", buckets=CONFIDENCE_BUCKETS, registry=many)
    for v in values:
        h1.observe(float(v))
    observe_many(h2, values)
    for bound in [*CONFIDENCE_BUCKETS, float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        assert sample(one, "h_bucket", le=le) == sample(many, "h_bucket", le=le)
    assert sample(one, "h_sum") == pytest.approx(sample(many, "h_sum"))


def test_ink_statistics_of_known_shapes() -> None:
    images = np.zeros((3, 28, 28), np.uint8)
    images[0, 4:24, 10:15] = 255  # tall bar: 20 high, 5 wide
    images[1, 10:15, 2:26] = 200  # wide bar: 5 high, 24 wide
    fraction, aspect = ink_statistics(images)  # image 2 has no ink: no aspect
    assert fraction.tolist() == pytest.approx([100 / 784, 120 / 784, 0.0])
    assert aspect.tolist() == pytest.approx([5 / 20, 24 / 5])


def test_answers_are_counted_by_label_and_not_a_digit() -> None:
    registry = CollectorRegistry()
    answers = AnswerMetrics(registry)
    probabilities = confident([7, 7, 3, 1])
    is_digit = np.array([True, True, True, False])
    answers.observe("cnn", 4, None, probabilities, is_digit, np.zeros((4, 28, 28), np.uint8))
    assert sample(registry, "digitserve_answers_total", model="cnn", version="4", answer="7") == 0  # noted only
    answers.flush()
    counts = {a: sample(registry, "digitserve_answers_total", model="cnn", version="4", answer=a) for a in ANSWERS}
    assert counts == {**dict.fromkeys(ANSWERS, 0.0), "7": 2.0, "3": 1.0, "not_a_digit": 1.0}
    assert sample(registry, "digitserve_answer_confidence_count", model="cnn", version="4") == 4


def test_a_flood_of_answers_is_counted_without_waiting_for_the_second() -> None:
    registry = CollectorRegistry()
    answers = AnswerMetrics(registry)
    images = np.zeros((64, 28, 28), np.uint8)
    for _ in range(FLUSH_IMAGES // 64):
        answers.observe("cnn", 4, None, confident([1] * 64), np.ones(64, bool), images)
    assert sample(registry, "digitserve_answers_total", model="cnn", version="4", answer="1") == FLUSH_IMAGES
    assert sample(registry, "digitserve_drift", model="cnn", version="4", signal="answers") == 0  # no reference


def test_drift_is_low_for_the_validation_mix_and_high_for_non_digits() -> None:
    reference = digits_reference()
    registry = CollectorRegistry()
    answers = AnswerMetrics(registry, window=500)
    images = np.zeros((1, 28, 28), np.uint8)
    for label in RNG.integers(0, 10, MIN_ANSWERS - 1):
        answers.observe("cnn", 4, reference, confident([int(label)]), np.ones(1, bool), images)
    answers.flush()
    labels = {"model": "cnn", "version": "4"}
    assert registry.get_sample_value("digitserve_drift", {**labels, "signal": "answers"}) is None  # too few yet
    digits = list(RNG.integers(0, 10, 400))
    answers.observe("cnn", 4, reference, confident(digits), np.ones(400, bool), np.zeros((400, 28, 28), np.uint8))
    answers.flush()
    assert sample(registry, "digitserve_drift", **labels, signal="answers") < 0.02
    assert sample(registry, "digitserve_drift", **labels, signal="confidence") < 0.02
    unsure = confident([0] * 300, confidence=0.2)
    for _ in range(2):  # two requests, counted in one flush
        answers.observe("cnn", 4, reference, unsure, np.zeros(300, bool), np.zeros((300, 28, 28), np.uint8))
    answers.flush()
    assert sample(registry, "digitserve_drift", **labels, signal="answers") > 0.9  # the window is all non-digits
    assert sample(registry, "digitserve_drift", **labels, signal="confidence") > 0.9


def test_js_divergence_bounds() -> None:
    p = np.array([0.5, 0.5, 0.0])
    assert js_divergence(p, p) == 0.0
    assert js_divergence(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0)


def test_a_reference_round_trips_and_a_damaged_one_is_ignored() -> None:
    reference = digits_reference(1000)
    doc = {"answers_reference": reference.to_dict()}
    back = AnswerReference.from_manifest(json.loads(json.dumps(doc)), "cnn v1")
    assert back is not None and back.count == 1000
    assert np.allclose(back.answers, reference.answers, atol=1e-6)
    assert AnswerReference.from_manifest({}, "cnn v1") is None
    damaged = json.loads(json.dumps(doc))
    damaged["answers_reference"]["answers"]["7"] = -1
    assert AnswerReference.from_manifest(damaged, "cnn v1") is None
    damaged = json.loads(json.dumps(doc))
    damaged["answers_reference"]["confidence"]["buckets"] = [0.5, 1.0]
    assert AnswerReference.from_manifest(damaged, "cnn v1") is None


def test_the_shipped_versions_carry_their_reference() -> None:
    registry = ModelRegistry.open()
    for model, version in (("cnn", 4), ("vit", 3)):
        manifest = registry.manifest(model, version)
        reference = AnswerReference.from_manifest(manifest.extra, f"{model} v{version}")
        assert reference is not None and reference.count == 5000
        assert reference.answers[-1] < 0.01  # validation digits are almost never "not a digit"


def test_a_field_is_added_to_a_manifest_never_replaced(tmp_path: pytest.TempPathFactory) -> None:
    registry = ModelRegistry.open(str(tmp_path))
    path = tmp_path / "cnn" / "versions" / "1" / "manifest.json"  # type: ignore[operator]
    path.parent.mkdir(parents=True)
    path.write_bytes(dumps({"model": "cnn", "version": 1, "architecture": "cnn", "config": {}}))
    registry.add_to_manifest("cnn", 1, "answers_reference", {"count": 1})
    registry.add_to_manifest("cnn", 1, "answers_reference", {"count": 1})  # the same again: nothing changes
    with pytest.raises(RegistryError, match="never replaced"):
        registry.add_to_manifest("cnn", 1, "answers_reference", {"count": 2})
    with pytest.raises(RegistryError, match="never replaced"):
        registry.add_to_manifest("cnn", 1, "architecture", "vit")
    assert json.loads(path.read_text())["answers_reference"] == {"count": 1}


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(b"abc-123", True), (b"x" * 128, True), (b"x" * 129, False), (b"a b", False), (b"", False), (b"\x00a", False)],
)
def test_a_client_request_id_is_kept_only_when_sane(sent: bytes, kept: bool) -> None:
    found = request_id_from([(b"host", b"t"), (b"x-request-id", sent)])
    assert (found == sent.decode("latin-1")) is kept
    if not kept:
        assert len(found) == 32 and int(found, 16) >= 0


def test_application_logs_are_json_with_the_request_id_of_their_own_task(capsys: pytest.CaptureFixture[str]) -> None:
    """A line logged while a request is handled carries its id; one logged by a task the request
    started (a batcher, a comparison pump: they copy its context) or outside any request does not."""
    logging.config.dictConfig(logging_config(Observability(log_format="json"), "info"))
    log = logging.getLogger("digitserve.test")

    async def request() -> None:
        current_request("req-42")
        log.warning("inside a request")
        await asyncio.get_running_loop().create_task(started_by_the_request())

    async def started_by_the_request() -> None:
        log.warning("in a task it started")

    try:
        asyncio.run(request())
        log.warning("outside")
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        for name in ("digitserve", "uvicorn", "digitserve.access", ""):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    assert [line["message"] for line in lines] == ["inside a request", "in a task it started", "outside"]
    assert lines[0]["request_id"] == "req-42" and "request_id" not in lines[1] and "request_id" not in lines[2]
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "digitserve.test" and lines[0]["time"]


def test_text_format_for_a_terminal() -> None:
    config = logging_config(Observability(log_format="text"), "info")
    formatter = config["formatters"]["digitserve"]["()"]()
    record = logging.LogRecord("digitserve.access", logging.INFO, "", 0, "GET /healthz 200", None, None)
    record.request_id = "abc"
    assert formatter.format(record).endswith("digitserve.access: GET /healthz 200 id=abc")
