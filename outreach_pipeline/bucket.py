"""The leads bucket: a local folder by default; files live under `<bucket>/<campaign_id>/`.

Ingested files move to `<campaign_id>/processed/`, their rejects reports to `<campaign_id>/rejected/`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

PROCESSED = "processed"
REJECTED = "rejected"
LEAD_FILE_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class BucketFile:
    key: str  # "<campaign_id>/<name>", the file's identity
    campaign_id: int
    size: int
    mtime_ns: int

    @property
    def version(self) -> str:
        return f"{self.size}-{self.mtime_ns}"


class LocalBucket:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def list_new_files(self) -> list[BucketFile]:
        """Lead files waiting under a numeric campaign folder (not yet moved aside)."""
        if not self.root.is_dir():
            return []
        found: list[BucketFile] = []
        for folder in sorted(self.root.iterdir()):
            if not (folder.is_dir() and folder.name.isdigit()):
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in LEAD_FILE_SUFFIXES and not path.name.startswith("."):
                    stat = path.stat()
                    found.append(BucketFile(f"{folder.name}/{path.name}", int(folder.name), stat.st_size,
                                            stat.st_mtime_ns))
        return found

    def locate(self, key: str) -> Path:
        """The file for a key: still waiting, or already moved to processed/ (a re-run)."""
        waiting = self.root / key
        if waiting.is_file():
            return waiting
        campaign, name = key.split("/", 1)
        processed = self.root / campaign / PROCESSED / name
        if processed.is_file():
            return processed
        raise FileNotFoundError(f"{key} is neither in the bucket nor in {campaign}/{PROCESSED}/")

    def rejects_path(self, key: str) -> Path:
        campaign, name = key.split("/", 1)
        return self.root / campaign / REJECTED / f"{Path(name).stem}.rejects.csv"

    def mark_processed(self, key: str) -> Path:
        source = self.root / key
        campaign, name = key.split("/", 1)
        target = self.root / campaign / PROCESSED / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target) if source.stat().st_dev == target.parent.stat().st_dev else shutil.move(
                source, target)
        return target


def campaign_of(key: str) -> int:
    return int(key.split("/", 1)[0])
