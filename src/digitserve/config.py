"""Every setting of digitserve, and the only module that reads the environment.

`Settings` (pydantic-settings, prefix `DIGITSERVE_`) configures the server; the small functions
below give the CLI, the training scripts and the gate their defaults. This module is a leaf: it
imports neither torch nor any other part of digitserve, so `digitserve --help` stays light.
"""

from __future__ import annotations

import getpass
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
ENV_PREFIX = "DIGITSERVE_"
GATE_THRESHOLD_PREFIX = f"{ENV_PREFIX}GATE_THRESHOLD_"


def shipped_registry() -> Path:
    """The baselines that ship inside the package (in a source checkout: the repo's `registry/`)."""
    return Path(str(files("digitserve.baselines")))


def default_registry_uri() -> str:
    """`DIGITSERVE_REGISTRY`, else the shipped baselines."""
    return os.environ.get(f"{ENV_PREFIX}REGISTRY") or str(shipped_registry())


def data_dir() -> Path:
    """Where MNIST is cached: `DIGITSERVE_DATA_DIR`, else ~/.cache/digitserve/mnist."""
    env = os.environ.get(f"{ENV_PREFIX}DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "digitserve" / "mnist"


def mnist_idx_dir() -> Path | None:
    """A folder of the official MNIST IDX files the user points at (`DIGITSERVE_MNIST_IDX_DIR`)."""
    env = os.environ.get(f"{ENV_PREFIX}MNIST_IDX_DIR")
    return Path(env).expanduser() if env else None


def gate_threshold_variable(model: str) -> str:
    return GATE_THRESHOLD_PREFIX + re.sub(r"[^A-Z0-9]", "_", model.upper())


def gate_threshold_setting(model: str) -> str | None:
    """The raw `DIGITSERVE_GATE_THRESHOLD_<MODEL>` value, if set (the gate parses and checks it)."""
    return os.environ.get(gate_threshold_variable(model)) or None


def gate_limit_setting(name: str) -> str | None:
    """The raw `DIGITSERVE_GATE_<NAME>` value of one of the gate's trust limits, if set."""
    return os.environ.get(f"{ENV_PREFIX}GATE_{name}") or None


def actor() -> str:
    """Who moves an alias: `DIGITSERVE_ACTOR`, the CI identity, else the local user."""
    for var in (f"{ENV_PREFIX}ACTOR", "GITHUB_ACTOR"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# A multi-worker server's shared state, set by `digitserve serve` for its worker processes.
RUNTIME_DIR_ENV = f"{ENV_PREFIX}RUNTIME_DIR"
WORKER_COUNT_ENV = f"{ENV_PREFIX}WORKER_COUNT"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it itself


def worker_group() -> tuple[Path | None, int]:
    """(the shared runtime folder, the number of workers) of the server this process is a worker of."""
    root = os.environ.get(RUNTIME_DIR_ENV)
    return (Path(root) if root else None), int(os.environ.get(WORKER_COUNT_ENV, "1") or 1)


def join_worker_group(root: Path, workers: int) -> None:
    """Export the group to the environment the worker processes inherit."""
    os.environ.update(
        {RUNTIME_DIR_ENV: str(root), WORKER_COUNT_ENV: str(workers), METRICS_DIR_ENV: str(root / "metrics")}
    )


def metrics_shared() -> bool:
    """Whether Prometheus samples go to the multiprocess folder (several workers)."""
    return bool(os.environ.get(METRICS_DIR_ENV))


class Settings(BaseSettings):
    """Every knob of the server. Each field is `DIGITSERVE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    registry: str = Field(default_factory=default_registry_uri, description="path, file://... or s3://bucket/prefix")
    models: Annotated[list[str], NoDecode] = Field(default=["cnn", "vit"], description="comma-separated model names")
    alias: str = "production"
    poll_seconds: float = Field(5.0, gt=0)
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "digitserve" / "blobs")

    max_batch_size: int = Field(64, ge=1, description="images per forward pass")
    max_batch_delay_ms: float = Field(
        2.0, ge=0, description="how long a batch may gather while another batch of its model is running"
    )
    max_queue: int = Field(2048, ge=1, description="queued images per model version before 503")
    max_concurrent_requests: int = Field(
        512, ge=1, description="prediction requests in progress (decoding or queued) before 503, checked on arrival"
    )
    request_timeout_s: float = Field(10.0, gt=0, description="deadline of one prediction (504 past it)")
    resident_versions: int = Field(3, ge=1, description="versions kept loaded per model for ?version= pins")

    onnx_providers: Annotated[list[str], NoDecode] = Field(
        default=["CPUExecutionProvider"], description="ONNX Runtime execution providers, in order of preference"
    )
    runtime_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads per worker (default: the cores shared by the workers)"
    )
    inference_slots: int = Field(1, ge=1, le=64, description="forward passes that may run at once per process")
    decode_processes: int = Field(
        1, ge=1, le=64, description="processes decoding images too large to decode on the event loop"
    )
    registry_threads: int = Field(2, ge=1, le=16, description="threads reading the registry (loads, listings)")
    workers: str = Field(
        "auto", pattern=r"^(auto|[1-9][0-9]?)$", description="server processes: a number, or auto (one per core)"
    )

    max_images: int = Field(256, ge=1, description="images per request")
    max_body_bytes: int = Field(8 * MiB, ge=1024)
    max_image_bytes: int = Field(4 * MiB, ge=1024, description="one encoded image")
    max_image_pixels: int = Field(16_000_000, ge=784, description="width x height, read from the header")
    max_request_pixels: int = Field(32_000_000, ge=784, description="pixels of all a request's images together")
    max_decode_backlog_pixels: int = Field(
        32_000_000, ge=784, description="pixels waiting for the decode processes before new decode work gets 503"
    )
    max_decode_wait_s: float = Field(
        0.25, gt=0, description="expected wait for the decode processes before new decode work gets 503"
    )
    max_upload_files: int = Field(256, ge=1)

    max_connections: int = Field(
        1024, ge=1, description="open connections per process; past it 503 (kept below the file-descriptor limit)"
    )
    head_timeout_s: float = Field(10.0, gt=0, description="time to send a request line and headers (then 408)")
    body_timeout_s: float = Field(20.0, gt=0, description="time to send a request body once its headers arrived")
    max_head_bytes: int = Field(32 * 1024, ge=1024, description="request line and headers together (then 431)")
    max_url_bytes: int = Field(8 * 1024, ge=256, description="the request target, path and query (then 414)")

    feedback_enabled: bool = Field(True, description="take people's corrections on POST /v1/feedback")
    feedback_per_minute: int = Field(
        30, ge=1, description="feedback samples one client may send a minute (429 past it)"
    )
    feedback_max_body_bytes: int = Field(1 * MiB, ge=1024, description="the body of one feedback request (413 past it)")
    feedback_spool_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "digitserve" / "feedback-spool",
        description="where feedback waits on local disk until the registry has it (kept across restarts)",
    )
    feedback_max_spooled: int = Field(
        10_000, ge=1, description="samples waiting for the registry before new feedback gets 503"
    )

    canary_alias: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="alias whose version answers a share of the traffic"
    )
    canary_percent: float = Field(
        0.0, ge=0, le=100, description="share of the alias-routed requests the canary answers"
    )
    canary_compare_percent: float = Field(
        25.0, ge=0, le=100, description="share of the canary's answers also computed by production, to compare"
    )
    canary_auto_rollback: bool = Field(True, description="retire a canary that fails its watch (rollouts.md)")
    canary_window_s: float = Field(60.0, gt=0, description="the sliding window the canary is judged over")
    canary_min_requests: int = Field(
        50, ge=1, description="canary requests in the window before errors and latency count"
    )
    canary_min_compared: int = Field(50, ge=1, description="compared answers in the window before agreement counts")
    canary_min_agreement: float = Field(0.97, ge=0, le=1, description="agreement with production below this: rollback")
    canary_max_error_rate: float = Field(
        0.02, ge=0, le=1, description="canary server errors above this share: rollback"
    )
    canary_max_deadline_miss_rate: float = Field(
        0.02, ge=0, le=1, description="canary deadline misses (504) above this share, and above production's: rollback"
    )
    canary_max_p99_ratio: float = Field(
        3.0, ge=1, description="canary p99 latency above this many times production's (plus the slack): rollback"
    )
    canary_p99_slack_ms: float = Field(50.0, ge=0, description="latency difference always allowed the canary")
    shadow_alias: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="alias whose version also runs, unseen, beside production",
    )
    shadow_percent: float = Field(0.0, ge=0, le=100, description="share of production's answers the shadow also runs")
    shadow_max_backlog: int = Field(
        256, ge=1, description="images waiting for background comparison (shadow, canary) before more are dropped"
    )
    disagreement_samples: int = Field(
        100, ge=0, description="disagreeing inputs kept in the registry per version pair and server process"
    )

    admin_token: SecretStr | None = None
    shutdown_grace_s: float = Field(1.0, ge=0, description="after SIGTERM: /readyz is 503 this long first")
    graceful_shutdown_s: float = Field(30.0, gt=0, description="then at most this long to answer what is in flight")
    keep_alive_s: int = Field(
        75, ge=1, description="idle keep-alive connections close after this; keep it above a load balancer's (ALB: 60)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    runtime_dir: Path | None = Field(
        None, description="shared folder of a multi-worker server (metrics, reload requests); made if unset"
    )

    @field_validator("models", "onnx_providers", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("registry", mode="before")
    @classmethod
    def _empty_registry_is_the_default(cls, value: object) -> object:
        return value if value else default_registry_uri()

    @field_validator("canary_alias", "shadow_alias", mode="before")
    @classmethod
    def _empty_alias_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value
