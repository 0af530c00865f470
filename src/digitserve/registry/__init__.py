"""The versioned model registry (local folder or S3)."""

from digitserve.registry.core import (
    AliasConflictError,
    AliasState,
    IntegrityError,
    ModelRegistry,
    build_model,
    verify_blob,
)
from digitserve.registry.store import (
    AlreadyExistsError,
    ConflictError,
    LocalStore,
    NotFoundError,
    RegistryError,
    Store,
    StoreUnavailableError,
    default_registry_uri,
    open_store,
)

__all__ = [
    "AliasConflictError",
    "AliasState",
    "AlreadyExistsError",
    "ConflictError",
    "IntegrityError",
    "LocalStore",
    "ModelRegistry",
    "NotFoundError",
    "RegistryError",
    "Store",
    "StoreUnavailableError",
    "build_model",
    "default_registry_uri",
    "open_store",
    "verify_blob",
]
