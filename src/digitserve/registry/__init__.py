"""The versioned model registry (local folder or S3): versions, artifacts, aliases, events."""

from digitserve.registry.core import AliasConflictError, IntegrityError, ModelRegistry, verify_blob
from digitserve.registry.records import (
    AliasState,
    Artifact,
    Golden,
    Manifest,
    ManifestError,
    MissingArtifactError,
    check_model_name,
)
from digitserve.storage import (
    AlreadyExistsError,
    ConflictError,
    LocalStore,
    NotFoundError,
    RegistryError,
    Store,
    StoreUnavailableError,
    open_store,
)

__all__ = [
    "AliasConflictError",
    "AliasState",
    "AlreadyExistsError",
    "Artifact",
    "ConflictError",
    "Golden",
    "IntegrityError",
    "LocalStore",
    "Manifest",
    "ManifestError",
    "MissingArtifactError",
    "ModelRegistry",
    "NotFoundError",
    "RegistryError",
    "Store",
    "StoreUnavailableError",
    "check_model_name",
    "open_store",
    "verify_blob",
]
