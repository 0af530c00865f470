"""The registry's typed records: a version's `Manifest` (with its `Artifact`s and `Golden` outputs)
and an alias's `AliasState`. Every reader goes through `from_dict`, which refuses a damaged or
hand-edited document with a `ManifestError` that says what is wrong, never a KeyError later.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from digitserve.storage import RegistryError

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_VERSION = 2**53  # versions are JSON numbers: beyond this they stop being exact integers
ARTIFACT_SUFFIX = {"weights": "safetensors", "onnx": "onnx"}
MANIFEST_FIELDS = ("model", "version", "architecture", "config", "weights", "onnx", "golden", "metrics", "created_at")


class ManifestError(RegistryError):
    """A manifest or alias document that cannot be read as one: damaged or hand-edited."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise RegistryError(f"invalid name {name!r}: use lowercase letters, digits, '-' and '_' (at most 64)")
    return name


def check_version(value: object, what: str) -> int:
    """A version number: an integer 1..2^53 (JSON's exact integers); bools, floats and text refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise ManifestError(f"{what} must be a version number (an integer from 1), got {str(value)[:40]!r}")
    return value


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def loads_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"{what} is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class Artifact:
    """One content-addressed blob of a version: the weights (safetensors) or the ONNX graph."""

    kind: str  # "weights" or "onnx"
    sha256: str
    size: int
    opset: int | None = None

    @property
    def format(self) -> str:
        return ARTIFACT_SUFFIX[self.kind]

    def key(self, model: str) -> str:
        return f"{model}/blobs/{self.sha256}.{self.format}"

    def to_dict(self, model: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"sha256": self.sha256, "size": self.size, "format": self.format, "key": self.key(model)}
        if self.opset is not None:
            doc["opset"] = self.opset
        return doc

    @classmethod
    def from_dict(cls, kind: str, doc: object, what: str) -> Artifact:
        if not isinstance(doc, dict):
            raise ManifestError(f"{what}: '{kind}' must be an object with sha256 and size")
        sha, size, opset = doc.get("sha256"), doc.get("size"), doc.get("opset")
        if not isinstance(sha, str) or not SHA256.match(sha):
            raise ManifestError(f"{what}: '{kind}.sha256' must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"{what}: '{kind}.size' must be a byte count")
        if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
            raise ManifestError(f"{what}: '{kind}.opset' must be an integer")
        return cls(kind, sha, size, opset)


@dataclass(frozen=True)
class Golden:
    """A few fixed digits and the logits the published model gives them: a loaded artifact that
    does not reproduce them (within `atol`) never serves."""

    images: np.ndarray  # (n, 28, 28) uint8
    logits: np.ndarray  # (n, 10) float32
    atol: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return {
            "images_uint8_b64": base64.b64encode(np.ascontiguousarray(self.images, np.uint8).tobytes()).decode(),
            "shape": list(self.images.shape),
            "logits": [[round(float(v), 6) for v in row] for row in self.logits],
            "atol": self.atol,
        }

    @classmethod
    def from_dict(cls, doc: object, what: str) -> Golden:
        try:
            assert isinstance(doc, dict)
            shape = tuple(int(s) for s in doc["shape"])
            images = np.frombuffer(base64.b64decode(doc["images_uint8_b64"]), np.uint8).reshape(shape).copy()
            logits = np.asarray(doc["logits"], dtype=np.float32)
            atol = float(doc.get("atol", 1e-3))
        except (AssertionError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ManifestError(f"{what}: the golden outputs are damaged ({type(exc).__name__})") from None
        if images.ndim != 3 or images.shape[1:] != (28, 28) or logits.shape != (len(images), 10):
            raise ManifestError(f"{what}: golden outputs must be (n, 28, 28) digits with (n, 10) logits")
        return cls(images, logits, atol)

    def worst_difference(self, logits: np.ndarray) -> float:
        """The largest absolute difference between `logits` and the recorded ones."""
        return float(np.abs(np.asarray(logits, np.float32) - self.logits).max())

    def mismatch(self, logits: np.ndarray) -> float | None:
        """The largest difference when it is over the tolerance (NaN counts as over), else None:
        the one check of an artifact against its golden outputs, wherever it is made."""
        worst = self.worst_difference(logits)
        return None if worst <= self.atol else worst


@dataclass(frozen=True)
class Manifest:
    """An immutable version: what rebuilds it, its artifacts, what it measured, where it came from."""

    model: str
    version: int
    architecture: str
    config: dict[str, Any]
    weights: Artifact
    onnx: Artifact | None
    golden: Golden | None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # preprocessing, training, data, git_commit, ...

    def artifact(self, kind: str) -> Artifact:
        found = self.weights if kind == "weights" else self.onnx if kind == "onnx" else None
        if found is None:
            raise MissingArtifactError(
                f"{self.model} v{self.version} has no {kind} artifact (published before ONNX serving; "
                f"republish it with `python training/export_onnx.py --model {self.model} --version {self.version}`)"
            )
        return found

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if isinstance(value, int | float) else None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            **self.extra,
            "model": self.model,
            "version": self.version,
            "architecture": self.architecture,
            "config": self.config,
            "weights": self.weights.to_dict(self.model),
            "metrics": self.metrics,
            "created_at": self.created_at,
        }
        if self.onnx is not None:
            doc["onnx"] = self.onnx.to_dict(self.model)
        if self.golden is not None:
            doc["golden"] = self.golden.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], model: str, version: int) -> Manifest:
        what = f"{model} v{version}: the manifest"
        architecture, config = doc.get("architecture"), doc.get("config")
        if not isinstance(architecture, str) or not isinstance(config, dict):
            raise ManifestError(f"{what} needs an 'architecture' name and a 'config' object")
        metrics = doc.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ManifestError(f"{what}: 'metrics' must be an object")
        onnx = doc.get("onnx")
        golden = doc.get("golden")
        return cls(
            model=model,
            version=version,
            architecture=architecture,
            config=config,
            weights=Artifact.from_dict("weights", doc.get("weights"), what),
            onnx=Artifact.from_dict("onnx", onnx, what) if onnx is not None else None,
            golden=Golden.from_dict(golden, what) if golden else None,
            metrics=metrics,
            created_at=str(doc.get("created_at", "")),
            extra={k: v for k, v in doc.items() if k not in MANIFEST_FIELDS},
        )


class MissingArtifactError(RegistryError):
    """The version has no artifact of the kind asked for (e.g. no ONNX graph to serve)."""


@dataclass(frozen=True)
class AliasState:
    version: int
    previous: int | None
    updated_at: str
    reason: str
    etag: str
    retired: bool = False  # a rollout alias (canary, shadow) that routes nothing until it is moved again

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "version": self.version,
            "previous": self.previous,
            "updated_at": self.updated_at,
            "reason": self.reason,
        }
        return {**doc, "retired": True} if self.retired else doc

    @classmethod
    def parse(cls, data: bytes, etag: str, what: str = "the alias:") -> AliasState:
        doc = loads_object(data, what)
        version = check_version(doc.get("version"), f"{what} 'version'")
        previous = doc.get("previous")
        if previous is not None:
            previous = check_version(previous, f"{what} 'previous'")
        updated, reason = str(doc.get("updated_at", ""))[:64], str(doc.get("reason", ""))[:1000]
        return cls(version, previous, updated, reason, etag, doc.get("retired") is True)
