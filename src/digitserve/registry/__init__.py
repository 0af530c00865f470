"""The versioned model registry (local folder or S3): versions, artifacts, aliases, events.

`core.py` (`ModelRegistry`), `records.py` (typed documents: `Manifest`, `Artifact`, `Golden`,
`AliasState`), `cache.py` (a disk cache of verified blobs for S3), `feedback.py` and
`feedback_snapshot.py` (people's corrections), `evidence.py` (rollouts' live evidence),
`samples.py` (each version's answers to the test digits). May import config and storage only."""

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
