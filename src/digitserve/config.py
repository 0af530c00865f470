"""Server settings: one `Settings` object, read from `DIGITSERVE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from digitserve.registry import default_registry_uri

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the server. Each field is `DIGITSERVE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DIGITSERVE_", extra="ignore")

    registry: str = Field(default_factory=default_registry_uri, description="path, file://... or s3://bucket/prefix")
    models: Annotated[list[str], NoDecode] = Field(default=["cnn", "vit"], description="comma-separated model names")
    alias: str = "production"
    poll_seconds: float = Field(5.0, gt=0)
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "digitserve" / "blobs")

    max_batch_size: int = Field(64, ge=1, description="images per forward pass")
    max_batch_delay_ms: float = Field(2.0, ge=0, description="wait after the first request of a batch")
    max_queue: int = Field(2048, ge=1, description="queued images per model version before 503")
    max_concurrent_requests: int = Field(
        512, ge=1, description="prediction requests in progress (decoding or queued) before 503, checked on arrival"
    )
    request_timeout_s: float = Field(10.0, gt=0, description="deadline of one prediction (504 past it)")
    resident_versions: int = Field(3, ge=1, description="versions kept loaded per model for ?version= pins")
    torch_threads: int | None = Field(None, ge=1)

    max_images: int = Field(256, ge=1, description="images per request")
    max_body_bytes: int = Field(8 * MiB, ge=1024)
    max_image_bytes: int = Field(4 * MiB, ge=1024, description="one encoded image")
    max_image_pixels: int = Field(16_000_000, ge=784, description="width x height, read from the header")
    max_upload_files: int = Field(256, ge=1)

    admin_token: SecretStr | None = None
    shutdown_grace_s: float = Field(1.0, ge=0, description="after SIGTERM: /readyz is 503 this long first")
    keep_alive_s: int = Field(
        75, ge=1, description="idle keep-alive connections close after this; keep it above a load balancer's (ALB: 60)"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value
