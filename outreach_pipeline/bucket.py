"""The leads bucket: files live under `<bucket>/<campaign_id>/`; a local folder by default, S3 in production.

Ingested files move to `<campaign_id>/processed/`, their rejects reports to `<campaign_id>/rejected/`.
`LEADS_BUCKET=s3://bucket/prefix` selects `S3Bucket` (outreach_pipeline/s3_bucket.py); both answer
to the `LeadBucket` interface, so the sensor and the asset never know which one they hold.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from outreach_pipeline.core.rejects import LocalRejects, RejectsTarget

PROCESSED = "processed"
REJECTED = "rejected"
LEAD_FILE_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class BucketFile:
    key: str  # "<campaign_id>/<name>", the file's identity
    campaign_id: int
    version: str  # changes whenever the file is written: size-mtime locally, ETag-upload time on S3


class LeadBucket(Protocol):
    """What the sensor and the asset need from a bucket, whatever holds it."""

    def list_new_files(self) -> list[BucketFile]: ...

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """The file, still waiting or already in processed/ (a re-run); seekable."""
        ...

    def rejects_target(self, key: str) -> RejectsTarget: ...

    def mark_processed(self, key: str) -> str: ...


def campaign_of(key: str) -> int:
    return int(key.split("/", 1)[0])


def lead_file_key(relative: str) -> BucketFile | None:
    """The key of a waiting lead file from its path under the bucket root, or None for anything else."""
    parts = PurePosixPath(relative).parts
    if len(parts) != 2 or not parts[0].isdigit():
        return None  # files in processed/, rejected/ or elsewhere are not waiting
    name = parts[1]
    if name.startswith(".") or not name.lower().endswith(LEAD_FILE_SUFFIXES):
        return None
    return BucketFile(f"{parts[0]}/{name}", int(parts[0]), "")


def processed_key(key: str) -> str:
    campaign, name = key.split("/", 1)
    return f"{campaign}/{PROCESSED}/{name}"


def rejects_key(key: str) -> str:
    campaign, name = key.split("/", 1)
    return f"{campaign}/{REJECTED}/{PurePosixPath(name).stem}.rejects.csv"


class LocalBucket:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def list_new_files(self) -> list[BucketFile]:
        """Lead files waiting under a numeric campaign folder (not yet moved aside)."""
        if not self.root.is_dir():
            return []
        found: list[BucketFile] = []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                waiting = lead_file_key(f"{folder.name}/{path.name}")
                if waiting is not None and path.is_file():
                    stat = path.stat()
                    found.append(BucketFile(waiting.key, waiting.campaign_id, f"{stat.st_size}-{stat.st_mtime_ns}"))
        return found

    def locate(self, key: str) -> Path:
        """The file for a key: still waiting, or already moved to processed/ (a re-run)."""
        for candidate in (self.root / key, self.root / processed_key(key)):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{key} is neither in the bucket nor in {processed_key(key)}")

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        with self.locate(key).open("rb") as stream:
            yield stream

    def rejects_target(self, key: str) -> RejectsTarget:
        return LocalRejects(self.root / rejects_key(key))

    def mark_processed(self, key: str) -> str:
        source, target = self.root / key, self.root / processed_key(key)
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.stat().st_dev == target.parent.stat().st_dev:
                os.replace(source, target)
            else:
                shutil.move(source, target)
        return str(target)


def open_bucket(location: str, endpoint_url: str = "") -> LeadBucket:
    """The bucket a LEADS_BUCKET value names: `s3://bucket/prefix` or a local folder."""
    if location.startswith("s3://"):
        from outreach_pipeline.s3_bucket import S3Bucket  # boto3 loads only when S3 is used

        return S3Bucket(location, endpoint_url=endpoint_url or None)
    return LocalBucket(location)
