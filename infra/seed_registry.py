"""Copy a local registry folder into an S3 registry, creating the bucket if needed.

    python infra/seed_registry.py registry/ s3://digitserve/registry

The compose file runs it against MinIO (endpoint from the standard AWS_ENDPOINT_URL); it works
on any S3. Keys that already exist are left alone, so a re-run never moves an alias that was
promoted since, and never rewrites a version or a blob (both are immutable anyway). Dotfiles
(lock files of local alias moves, half-written temporaries) are not part of a registry and
are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def registry_files(root: Path) -> list[Path]:
    """Every file under `root` that belongs to the registry, sorted: files inside model folders,
    no dotfiles (the shipped folder's `__init__.py` and `__pycache__` make it a package, not a model)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and len(p.relative_to(root).parts) > 1
        and not any(part.startswith((".", "__")) for part in p.relative_to(root).parts)
    )


def ensure_bucket(s3: S3Client, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
        s3.create_bucket(Bucket=bucket)


def key_exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def seed(source: Path, uri: str) -> tuple[int, int]:
    """Upload what is missing; returns (uploaded, already present)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"destination must be s3://bucket/prefix, not {uri!r}")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    s3 = boto3.client("s3")
    ensure_bucket(s3, bucket)
    uploaded = present = 0
    for path in registry_files(source):
        key = "/".join(filter(None, [prefix, path.relative_to(source).as_posix()]))
        if key_exists(s3, bucket, key):
            present += 1
            continue
        s3.upload_file(str(path), bucket, key)
        uploaded += 1
    return uploaded, present


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="local registry folder, e.g. registry/")
    parser.add_argument("destination", help="s3://bucket/prefix")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source} is not a folder", file=sys.stderr)
        return 1
    try:
        uploaded, present = seed(args.source, args.destination)
    except (ValueError, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.destination}: {uploaded} objects uploaded, {present} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
