"""Every setting of digitserve, and the only module that reads the environment.

`Settings` (pydantic-settings) configures the server in groups -- `settings.http`,
`settings.requests`, `settings.batching`, `settings.runtime`, `settings.feedback`,
`settings.canary`, `settings.shadow` -- while every variable keeps its flat name: a group's
field `x` is `DIGITSERVE_<group prefix>X` (`settings.batching.max_queue` is
`DIGITSERVE_MAX_QUEUE`, `settings.canary.percent` is `DIGITSERVE_CANARY_PERCENT`). The small
functions below give the CLI, the training scripts and the gate their defaults; `gate_fraction`
parses and range-checks every gate limit. This module is a leaf: it imports neither torch nor any
other part of digitserve, so `digitserve --help` stays light.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Collection
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from digitserve.config.groups import (
    GROUPS,
    Batching,
    CanarySettings,
    FeedbackSettings,
    GateSettings,
    Group,
    HttpLimits,
    Observability,
    RequestLimits,
    Runtime,
    ShadowSettings,
    split_list,
)
from digitserve.config.groups import (
    MiB as MiB,
)

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


def state_dir() -> Path:
    """Where a server keeps what it writes for the shipped registry (feedback, evidence, samples):
    `DIGITSERVE_STATE_DIR`, else ~/.local/share/digitserve -- never the package's own folder."""
    env = os.environ.get(f"{ENV_PREFIX}STATE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "digitserve"


def mnist_idx_dir() -> Path | None:
    """A folder of the official MNIST IDX files the user points at (`DIGITSERVE_MNIST_IDX_DIR`)."""
    env = os.environ.get(f"{ENV_PREFIX}MNIST_IDX_DIR")
    return Path(env).expanduser() if env else None


def gate_threshold_variable(model: str) -> str:
    return GATE_THRESHOLD_PREFIX + re.sub(r"[^A-Z0-9]", "_", model.upper())


class SettingError(ValueError):
    """A `DIGITSERVE_*` value (or the flag that overrides it) that cannot be used: one line saying why."""


def gate_fraction(variable: str, override: float | None, flag: str, what: str = "a fraction") -> float | None:
    """A per-model gate limit (DIGITSERVE_GATE_THRESHOLD_<MODEL>), checked to lie in [0, 1]: the
    flag's value, else the environment's, else None (the caller's default applies)."""
    if override is not None:
        return checked_fraction(override, flag, what)
    text = os.environ.get(variable) or None
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"{variable}={text!r} is not a number") from None
    return checked_fraction(value, variable, what)


def checked_fraction(value: float, source: str, what: str = "a fraction") -> float:
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise SettingError(f"{source} must be {what} in [0, 1], got {value}")
    return value


def flag_name(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def forwarded_allow_ips() -> str | None:
    """`FORWARDED_ALLOW_IPS` (uvicorn's name): the proxies whose X-Forwarded-For the server believes.
    Unset, it believes none -- not even loopback, which uvicorn would trust by default."""
    return os.environ.get("FORWARDED_ALLOW_IPS") or None


def otlp_traces_endpoint() -> str | None:
    """Where spans go: OpenTelemetry's own variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    `OTEL_EXPORTER_OTLP_ENDPOINT`); unset, nothing is traced and tracing costs nothing."""
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def stdout_is_terminal() -> bool:
    return os.isatty(1)


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


def export_setting(name: str, value: str) -> None:
    """Set `DIGITSERVE_<NAME>` here and in the worker processes this one starts (a flag, a port)."""
    os.environ[ENV_PREFIX + name.upper()] = value


def join_worker_group(root: Path, workers: int) -> None:
    """Export the group to the environment the worker processes inherit."""
    os.environ.update(
        {RUNTIME_DIR_ENV: str(root), WORKER_COUNT_ENV: str(workers), METRICS_DIR_ENV: str(root / "metrics")}
    )


def metrics_shared() -> bool:
    """Whether Prometheus samples go to the multiprocess folder (several workers)."""
    return bool(os.environ.get(METRICS_DIR_ENV))


def env_name(group: type[Group], field: str) -> str:
    """The environment variable of a group's field (without the DIGITSERVE_ prefix)."""
    names: dict[str, str] = getattr(group, "ENV_NAMES", {})
    return names.get(field) or f"{group.ENV}{field}".upper()


class GroupedEnvSource(PydanticBaseSettingsSource):
    """Reads each group's fields from their flat `DIGITSERVE_*` variables."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read at once in __call__

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        found: dict[str, Any] = {}
        for name, group in GROUPS.items():
            names = {f: ENV_PREFIX + env_name(group, f) for f in group.model_fields}
            values = {f: env[var] for f, var in names.items() if var in env}
            if values:
                found[name] = values
        return found


FLAT_FIELDS = {env_name(g, f).lower(): (name, f) for name, g in GROUPS.items() for f in g.model_fields}


class Settings(BaseSettings):
    """Every knob of the server: a few top-level ones and the groups above. Flat names work in
    the constructor too (`Settings(max_queue=8)`), as in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    registry: str = Field(default_factory=default_registry_uri, description="path, file://... or s3://bucket/prefix")
    models: Annotated[list[str], NoDecode] = Field(default=["cnn", "vit"], description="comma-separated model names")
    alias: str = "production"
    poll_seconds: float = Field(5.0, gt=0)
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "digitserve" / "blobs")
    workers: str = Field("auto", pattern=r"^(auto|[1-9][0-9]?)$", description="server processes: a number, or auto")
    admin_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535, description="Open Inference Protocol over gRPC; off when unset")
    log_level: str = "info"
    runtime_dir: Path | None = Field(None, description="shared folder of a multi-worker server; made if unset")

    http: HttpLimits = HttpLimits()
    requests: RequestLimits = RequestLimits()
    batching: Batching = Batching()
    runtime: Runtime = Runtime()
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    canary: CanarySettings = CanarySettings()
    shadow: ShadowSettings = ShadowSettings()
    gate: GateSettings = GateSettings()
    observability: Observability = Observability()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, GroupedEnvSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _flat_names_into_groups(cls, data: Any) -> Any:
        """`max_queue=8` given flat (constructor) joins its group, over what the environment said."""
        if not isinstance(data, dict):
            return data
        out = {k: v for k, v in data.items() if k not in FLAT_FIELDS}
        for key, value in data.items():
            if key in FLAT_FIELDS:
                group, field = FLAT_FIELDS[key]
                current = out.get(group)
                merged = dict(current) if isinstance(current, dict) else (current.model_dump() if current else {})
                out[group] = {**merged, field: value}
        return out

    @field_validator("models", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("registry", mode="before")
    @classmethod
    def _empty_registry_is_the_default(cls, value: object) -> object:
        return value if value else default_registry_uri()

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value


G = TypeVar("G", bound=Group)


def read_group(group: type[G], skip: Collection[str] = ()) -> G:
    """One group of settings from the environment alone (the gate reads its own this way), but the
    fields in `skip` (a flag gives them); a value that cannot be used is a `SettingError` naming its
    variable and what it says."""
    env = {k.upper(): v for k, v in os.environ.items()}
    names = {f: ENV_PREFIX + env_name(group, f) for f in group.model_fields if f not in skip}
    try:
        return group.model_validate({f: env[var] for f, var in names.items() if var in env})
    except ValidationError as exc:
        error = exc.errors()[0]
        var = names.get(str(error["loc"][0]), "?") if error.get("loc") else "?"
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        raise SettingError(f"{var}={env.get(var)!r} {message}") from None


def load_settings() -> Settings:
    """The server's settings from the environment; a value that cannot be used is a `SettingError`
    naming its variable (one line), not a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingError("; ".join(_describe(error) for error in exc.errors()[:3])) from None


def _describe(error: Any) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    group = GROUPS.get(loc[0]) if loc else None
    name = env_name(group, loc[1]) if group is not None and len(loc) > 1 else "_".join(loc).upper()
    return f"{ENV_PREFIX}{name}: {error.get('msg', 'invalid')}"
