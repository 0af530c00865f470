"""The registry on S3: create-only writes with `If-None-Match: *`, compare-and-swap with `If-Match`.

The endpoint comes from the standard `AWS_ENDPOINT_URL` and credentials from the usual boto3
chain (environment, profile, instance role); boto3 reads both itself. Failures become the typed
exceptions of `errors.py` with one line a person can act on: a missing bucket, refused
credentials and an unreachable endpoint are `errors.StoreUnavailableError`, never a traceback.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from digitserve.storage import errors
from digitserve.storage.base import Store

# Bounded retries with jittered backoff for throttling and transient errors (5xx, dropped
# connections); short timeouts so an unreachable endpoint fails in seconds, not minutes.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=2,
    read_timeout=15,
    max_pool_connections=16,
)

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
        "403",
    }
)
MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class S3Store(Store):
    """Objects under `s3://bucket/prefix/`; keys are '/'-separated paths below the prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any | None = None, page_size: int = 1000) -> None:
        if not bucket:
            raise errors.RegistryError("an S3 registry URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.page_size = page_size
        # A session per store: boto3's default session is not safe to share across threads.
        self.client = client or boto3.session.Session().client("s3", config=CLIENT_CONFIG)

    # --- keys and errors --------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise errors.RegistryError(f"key {key!r} escapes the registry root")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    @contextmanager
    def _errors(
        self,
        key: str,
        *,
        precondition: type[errors.RegistryError] = errors.ConflictError,
        missing: type[errors.RegistryError] = errors.NotFoundError,
    ) -> Iterator[None]:
        """Turn botocore failures into the store's typed exceptions, with one clear line."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, key, precondition, missing) from exc
        except (BotoConnectionError, HTTPClientError) as exc:
            endpoint = self.client.meta.endpoint_url
            raise errors.StoreUnavailableError(
                f"cannot reach S3 endpoint {endpoint} for {self.uri}: {type(exc).__name__} "
                "(check AWS_ENDPOINT_URL and the network)"
            ) from exc
        except NoCredentialsError as exc:
            raise errors.StoreUnavailableError(
                f"no AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role"
            ) from exc
        except BotoCoreError as exc:
            raise errors.StoreUnavailableError(f"S3 request for {self.uri}/{key} failed: {exc}") from exc

    def _client_error(
        self,
        exc: ClientError,
        key: str,
        precondition: type[errors.RegistryError],
        missing: type[errors.RegistryError],
    ) -> errors.RegistryError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        where = f"s3://{self.bucket}/{self._key(key)}"
        if code == "NoSuchBucket":
            return errors.StoreUnavailableError(f"bucket {self.bucket!r} does not exist (registry {self.uri})")
        if code in ACCESS_DENIED_CODES:
            return errors.StoreUnavailableError(
                f"access denied to {where} ({code}): check the AWS credentials and the bucket policy"
            )
        if code in MISSING_KEY_CODES or status == 404:
            return missing(f"{key} not found in {self.uri}")
        if code == "PreconditionFailed" or status == 412:
            if precondition is errors.AlreadyExistsError:
                return errors.AlreadyExistsError(f"{key} already exists in {self.uri}")
            return precondition(f"{key} was changed by someone else since it was read; re-read and retry")
        if code == "ConditionalRequestConflict" or status == 409:
            if precondition is errors.AlreadyExistsError:  # a concurrent create of the same key: it is taken
                return errors.AlreadyExistsError(f"{key} is being created by someone else; use another key")
            return errors.ConflictError(f"{key} is being written by someone else at the same time; re-read and retry")
        message = error.get("Message", "")
        return errors.StoreUnavailableError(f"S3 refused the request for {where}: {code or status} {message}".strip())

    # --- the Store operations ---------------------------------------------------------------

    def read(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), str(response["ETag"])

    def exists(self, key: str) -> bool:
        """A HEAD request, so checking for a blob does not download it."""
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except errors.NotFoundError:
            return False
        return True

    def create(self, key: str, data: bytes) -> str:
        with self._errors(key, precondition=errors.AlreadyExistsError):
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return str(response["ETag"])

    def replace(self, key: str, data: bytes, etag: str | None) -> str:
        # A 404 on If-Match means the key was deleted since it was read: also a lost race.
        with self._errors(key, precondition=errors.ConflictError, missing=errors.ConflictError):
            if etag is None:
                response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            else:
                response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=etag)
            return str(response["ETag"])

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _pages(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._key(prefix),
            PaginationConfig={"PageSize": self.page_size},
            **extra,
        )
        with self._errors(prefix):
            for page in pages:
                yield dict(page)

    def list(self, prefix: str) -> list[str]:
        keys = (self._relative(obj["Key"]) for page in self._pages(prefix) for obj in page.get("Contents", []))
        return sorted(k for k in keys if not k.endswith("/"))

    def list_times(self, prefix: str) -> dict[str, float]:
        return {
            self._relative(obj["Key"]): obj["LastModified"].timestamp()
            for page in self._pages(prefix)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")
        }

    def children(self, prefix: str) -> builtins.list[str]:
        full = self._key(prefix)
        names = (
            p["Prefix"][len(full) :].rstrip("/")
            for page in self._pages(prefix, Delimiter="/")
            for p in page.get("CommonPrefixes", [])
        )
        return sorted(n for n in names if n and not n.startswith("."))
