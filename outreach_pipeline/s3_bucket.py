"""The leads bucket on S3 (or any S3-protocol store): `LEADS_BUCKET=s3://bucket/prefix`.

Same layout and contract as the local folder: `<prefix>/<campaign_id>/<file>` waits, then moves to
`processed/`; reports go to `rejected/`. A file's version is its ETag, which changes with its content.
Credentials and endpoint come from boto3's usual chain (AWS_* variables, ~/.aws, instance roles;
AWS_ENDPOINT_URL for MinIO and friends) unless an endpoint is given.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.exceptions import ClientError

from outreach_pipeline.bucket import BucketFile, lead_file_key, processed_key, rejects_key

# Downloads larger than this spill from memory to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix") of "s3://bucket/prefix" (the prefix may be empty)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def _is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


def _version(item: dict[str, Any]) -> str:
    """The ETag and the upload time: the same content uploaded again is a new version too, as a copied file
    is locally (size-mtime), so it is imported (every row already in the campaign) and moved aside rather
    than left waiting forever under a run key that was already used."""
    etag = item["ETag"].strip('"')
    return f"{etag}-{int(item['LastModified'].timestamp())}"


class S3Rejects:
    """A rejects report written to a local scratch file and uploaded once the import succeeded."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.location = f"s3://{bucket}/{key}"

    def scratch(self) -> Path:
        handle, name = tempfile.mkstemp(suffix=".rejects.csv")
        os.close(handle)
        return Path(name)

    def publish(self, written: Path) -> None:
        try:
            self.client.upload_file(str(written), self.bucket, self.key, ExtraArgs={"ContentType": "text/csv"})
        finally:
            written.unlink(missing_ok=True)

    def remove(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)  # no error when there is none


class S3Bucket:
    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def list_new_files(self) -> list[BucketFile]:
        root = f"{self.prefix}/" if self.prefix else ""
        found: list[BucketFile] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            for item in page.get("Contents", []):
                waiting = lead_file_key(item["Key"][len(root):])
                if waiting is not None:
                    found.append(BucketFile(waiting.key, waiting.campaign_id, _version(item)))
        return sorted(found, key=lambda f: f.key)

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """Download to a spooled temporary file: the import needs to seek, and a stream may time out."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as local:
            for candidate in (key, processed_key(key)):
                try:
                    self.client.download_fileobj(self.bucket, self._object(candidate), local)
                    break
                except ClientError as error:
                    if not _is_missing(error):
                        raise
            else:
                raise FileNotFoundError(f"{key} is neither in s3://{self.bucket}/{self.prefix} nor in processed/")
            local.seek(0)
            yield local  # type: ignore[misc]

    def rejects_target(self, key: str) -> S3Rejects:
        return S3Rejects(self.client, self.bucket, self._object(rejects_key(key)))

    def mark_processed(self, key: str) -> str:
        source, target = self._object(key), self._object(processed_key(key))
        try:
            self.client.head_object(Bucket=self.bucket, Key=source)
        except ClientError as error:
            if not _is_missing(error):
                raise
            return f"s3://{self.bucket}/{target}"  # already moved (a re-run)
        # A managed copy (multipart past 5 GB), then the delete: a crash between them leaves a copy, not a loss.
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)
        self.client.delete_object(Bucket=self.bucket, Key=source)
        return f"s3://{self.bucket}/{target}"
