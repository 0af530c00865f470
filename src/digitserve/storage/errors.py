"""The errors of registry storage, and the base of every registry failure: the registry layer
raises the same types, so callers catch one family (`RegistryError`)."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """Base class of every registry failure; messages are one line a person can act on."""


class NotFoundError(RegistryError):
    pass


class AlreadyExistsError(RegistryError):
    pass


class ConflictError(RegistryError):
    """A compare-and-swap lost: somebody else changed the key since it was read."""


class StoreUnavailableError(RegistryError):
    """The store could not be reached or refused access (network, credentials, bucket)."""
