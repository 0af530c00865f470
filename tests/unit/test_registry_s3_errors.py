"""S3Store turns every S3 failure into a typed, one-line error (botocore's Stubber plays S3).

The conditions moto never produces (409 ConditionalRequestConflict, AccessDenied, throttling
that outlasts the retries) are checked here; the rest also runs against moto in
tests/integration/test_store_contract.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber

from digitserve.registry import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RegistryError,
    StoreUnavailableError,
    open_store,
)
from digitserve.storage.s3 import S3Store


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Store, Stubber]]:
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield S3Store("bkt", "reg", client=client), stubber
        stubber.assert_no_pending_responses()


def test_precondition_failed_means_exists_on_create_and_conflict_on_replace(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
    with pytest.raises(AlreadyExistsError) as info:
        store.create("m/versions/1/manifest.json", b"{}")
    assert str(info.value) == "m/versions/1/manifest.json already exists in s3://bkt/reg"
    stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
    with pytest.raises(ConflictError, match="changed by someone else"):
        store.replace("m/aliases/production.json", b"{}", '"abc"')


def test_concurrent_conditional_write_is_a_conflict(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
    with pytest.raises(ConflictError, match="being written by someone else"):
        store.replace("m/aliases/production.json", b"{}", '"abc"')
    # On a create (a new version's manifest) the key is being taken: publish moves on to n+1.
    stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
    with pytest.raises(AlreadyExistsError, match="being created by someone else"):
        store.create("m/versions/3/manifest.json", b"{}")


def test_alias_deleted_since_read_is_a_conflict(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", "NoSuchKey", http_status_code=404)  # If-Match on a missing key
    with pytest.raises(ConflictError):
        store.replace("m/aliases/production.json", b"{}", '"abc"')


def test_missing_key_and_missing_bucket(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
    with pytest.raises(NotFoundError) as info:
        store.read("m/x.json")
    assert str(info.value) == "m/x.json not found in s3://bkt/reg"
    stub.add_client_error("head_object", "404", http_status_code=404)
    assert store.exists("m/x.json") is False
    stub.add_client_error("list_objects_v2", "NoSuchBucket", http_status_code=404)
    with pytest.raises(StoreUnavailableError, match=r"^bucket 'bkt' does not exist \(registry s3://bkt/reg\)$"):
        store.list("m/")


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refused_credentials(stubbed: tuple[S3Store, Stubber], code: str) -> None:
    store, stub = stubbed
    stub.add_client_error("get_object", code, http_status_code=403)
    with pytest.raises(StoreUnavailableError) as info:
        store.read("m/x.json")
    assert str(info.value) == (
        f"access denied to s3://bkt/reg/m/x.json ({code}): check the AWS credentials and the bucket policy"
    )


def test_other_errors_name_the_code(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", "SlowDown", "Please reduce your request rate.", http_status_code=503)
    with pytest.raises(StoreUnavailableError) as info:
        store.put("m/blobs/x", b"x")
    assert (
        str(info.value)
        == "S3 refused the request for s3://bkt/reg/m/blobs/x: SlowDown Please reduce your request rate."
    )


def test_s3_uris_open_an_s3_store() -> None:
    store = open_store("s3://my-bucket/some/prefix/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == ("my-bucket", "some/prefix", "s3://my-bucket/some/prefix")
    bare = open_store("s3://my-bucket")
    assert isinstance(bare, S3Store) and (bare.prefix, bare.uri) == ("", "s3://my-bucket")
    with pytest.raises(RegistryError, match="needs a bucket"):
        open_store("s3:///prefix-only")
