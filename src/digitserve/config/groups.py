"""The groups of server settings (`settings.http`, `settings.batching`, ...): plain pydantic models
with their limits and defaults. `config/__init__.py` reads them from the environment, where a
group's field `x` is `DIGITSERVE_<ENV><X>`: the flat names users know."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

MiB = 1024 * 1024


def split_list(value: object) -> object:
    """A comma-separated setting ("cnn, vit") as a list."""
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return value


ALIAS_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Group(BaseModel):
    """A group of settings; its field `x` is `DIGITSERVE_<ENV><X>` in the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ENV: ClassVar[str] = ""


class HttpLimits(Group):
    """Connections and shutdown, enforced below the app (serving/http/)."""

    max_connections: int = Field(1024, ge=1, description="open connections per process; past it 503")
    head_timeout_s: float = Field(10.0, gt=0, description="time to send a request line and headers (then 408)")
    body_timeout_s: float = Field(20.0, gt=0, description="time to send a request body once its headers arrived")
    max_head_bytes: int = Field(32 * 1024, ge=1024, description="request line and headers together (then 431)")
    max_url_bytes: int = Field(8 * 1024, ge=256, description="the request target, path and query (then 414)")
    keep_alive_s: int = Field(75, ge=1, description="idle keep-alive connections close after this (above an ALB's 60)")
    shutdown_grace_s: float = Field(1.0, ge=0, description="after SIGTERM: /readyz is 503 this long first")
    graceful_shutdown_s: float = Field(30.0, gt=0, description="then at most this long to answer what is in flight")


class RequestLimits(Group):
    """What one prediction may ask for, and how much work may be in progress."""

    max_concurrent_requests: int = Field(512, ge=1, description="predictions in progress before 503, on arrival")
    request_timeout_s: float = Field(10.0, gt=0, description="deadline of one prediction from arrival (504 past it)")
    max_images: int = Field(256, ge=1, description="images per request")
    max_body_bytes: int = Field(8 * MiB, ge=1024)
    max_image_bytes: int = Field(4 * MiB, ge=1024, description="one encoded image")
    max_image_pixels: int = Field(16_000_000, ge=784, description="width x height, read from the header")
    max_request_pixels: int = Field(32_000_000, ge=784, description="pixels of all a request's images together")
    max_decode_backlog_pixels: int = Field(32_000_000, ge=784, description="pixels waiting for the decode processes")
    max_decode_wait_s: float = Field(
        0.25, gt=0, description="expected wait for the decode processes past which only a burst joins"
    )
    decode_burst_s: float = Field(
        0.25, ge=0, description="decoding (priced) admitted past max_decode_wait_s in a burst; whole when idle"
    )
    max_upload_files: int = Field(256, ge=1)
    decode_processes: int = Field(1, ge=1, le=64, description="processes decoding images too large for the loop")


class Batching(Group):
    """The dynamic batcher of each loaded version (serving/inference/batching.py)."""

    max_batch_size: int = Field(64, ge=1, description="images per forward pass")
    max_batch_delay_ms: float = Field(2.0, ge=0, description="how long a batch may gather while another runs")
    max_queue: int = Field(2048, ge=1, description="queued images per model version before 503")
    inference_slots: int = Field(1, ge=1, le=64, description="served versions' forward passes at once per process")


class Runtime(Group):
    """ONNX Runtime and the threads that read the registry."""

    onnx_providers: Annotated[list[str], NoDecode] = Field(
        default=["CPUExecutionProvider"], description="ONNX Runtime execution providers, in order of preference"
    )
    runtime_threads: int | None = Field(None, ge=1, description="intra-op threads per worker (default: cores/workers)")
    registry_threads: int = Field(2, ge=1, le=16, description="threads reading the registry (loads, listings)")
    resident_versions: int = Field(3, ge=1, description="versions kept loaded per model for ?version= pins")

    @field_validator("onnx_providers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_list(value)


class FeedbackSettings(Group):
    """POST /v1/feedback: people's corrections (DIGITSERVE_FEEDBACK_*)."""

    ENV: ClassVar[str] = "FEEDBACK_"
    enabled: bool = Field(True, description="take people's corrections on POST /v1/feedback")
    per_minute: int = Field(30, ge=1, description="feedback samples one client may send a minute (429 past it)")
    max_body_bytes: int = Field(1 * MiB, ge=1024, description="the body of one feedback request (413 past it)")
    spool_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "digitserve" / "feedback-spool",
        description="where feedback waits on local disk until the registry has it (kept across restarts)",
    )
    max_spooled: int = Field(10_000, ge=1, description="samples waiting for the registry before new feedback gets 503")


class CanarySettings(Group):
    """The canary: its share of the traffic, its watch and the limits that roll it back
    (DIGITSERVE_CANARY_*; docs/rollouts.md)."""

    ENV: ClassVar[str] = "CANARY_"
    alias: str | None = Field(None, pattern=ALIAS_NAME, description="alias whose version answers a share")
    percent: float = Field(0.0, ge=0, le=100, description="share of the alias-routed requests the canary answers")
    compare_percent: float = Field(25.0, ge=0, le=100, description="share of its answers also computed by production")
    auto_rollback: bool = Field(True, description="retire a canary that fails its watch")
    window_s: float = Field(60.0, gt=0, description="the sliding window the canary is judged over")
    min_requests: int = Field(50, ge=1, description="canary requests in the window before errors and latency count")
    min_compared: int = Field(50, ge=1, description="compared answers in the window before agreement counts")
    min_agreement: float = Field(
        0.97, ge=0, le=1, description="agreement with production below this (the median client network's): rollback"
    )
    min_clients: int = Field(3, ge=1, description="client networks among the compared inputs before agreement counts")
    answers_per_compared: int = Field(
        20, ge=1, description="canary answers per compared input at most; past it production answers (no evidence)"
    )
    max_error_rate: float = Field(0.02, ge=0, le=1, description="canary server errors above this share: rollback")
    max_deadline_miss_rate: float = Field(0.02, ge=0, le=1, description="deadline misses above this (and production's)")
    max_p99_ratio: float = Field(
        3.0, ge=1, description="p99 above this many times production's (plus slack), beyond luck: rollback"
    )
    p99_slack_ms: float = Field(50.0, ge=0, description="latency difference always allowed the canary")

    @field_validator("alias", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class GateSettings(Group):
    """The promotion gate's limits (DIGITSERVE_GATE_*), each a fraction in [0, 1]; `digitserve
    registry promote`'s flags override them. A model's accuracy threshold is
    `DIGITSERVE_GATE_THRESHOLD_<MODEL>` (`gate_fraction`), its default by architecture."""

    ENV: ClassVar[str] = "GATE_"
    max_regression: float = Field(0.001, description="test accuracy a candidate may lose to the alias's version")
    max_ece: float = Field(0.015, description="calibrated test-set ECE (15 bins) at most")
    max_digits_not_a_digit: float = Field(0.003, description="MNIST test digits answered 'not a digit' at most")
    min_negatives_not_a_digit: float = Field(0.95, description="held-out negatives answered 'not a digit' at least")

    @field_validator("*", mode="before")
    @classmethod
    def _fraction(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError("is not a number") from None
        if isinstance(value, float | int) and not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(f"must be a fraction in [0, 1], got {value}")
        return value


# What `digitserve registry promote --from canary` asks of a canary's published evidence (the flags'
# defaults). A higher bar than the watch's: a canary whose agreement lies between
# `CanarySettings.min_agreement` (rolled back below it) and `PROMOTE_MIN_AGREEMENT` is neither
# rolled back nor promoted -- it waits for a person.
PROMOTE_MIN_COMPARED = 200
PROMOTE_MIN_AGREEMENT = 0.99
PROMOTE_MAX_ERROR_RATE = 0.01
PROMOTE_MIN_CLIENTS = 3  # client networks among the compared inputs (no one client's chosen inputs promote)


class ShadowSettings(Group):
    """The shadow, run unseen beside production, and what comparisons may cost (DIGITSERVE_SHADOW_*)."""

    ENV: ClassVar[str] = "SHADOW_"
    alias: str | None = Field(None, pattern=ALIAS_NAME, description="alias whose version also runs, unseen")
    percent: float = Field(0.0, ge=0, le=100, description="share of production's answers the shadow also runs")
    max_backlog: int = Field(256, ge=1, description="images waiting for background comparison before more are dropped")
    disagreement_samples: int = Field(100, ge=0, description="disagreeing inputs kept per version pair and process")
    ENV_NAMES: ClassVar[dict[str, str]] = {"disagreement_samples": "DISAGREEMENT_SAMPLES"}  # its historical name

    @field_validator("alias", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class Observability(Group):
    """Request logs, what the models answer as metrics, and drift (docs/observability.md)."""

    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json: one JSON object per line; text: for a terminal; auto: text on a terminal, else json"
    )
    access_log: bool = Field(True, description="one log line per HTTP request, early refusals included")
    log_answers: bool = Field(False, description="add each prediction's labels and is_digit to its log line")
    request_metrics: bool = Field(True, description="count requests and answers in /metrics (off: only for benchmarks)")
    drift_window: int = Field(1000, ge=50, le=100_000, description="answers per version the drift gauge compares")


GROUPS: dict[str, type[Group]] = {
    "http": HttpLimits,
    "requests": RequestLimits,
    "batching": Batching,
    "runtime": Runtime,
    "feedback": FeedbackSettings,
    "canary": CanarySettings,
    "shadow": ShadowSettings,
    "gate": GateSettings,
    "observability": Observability,
}
