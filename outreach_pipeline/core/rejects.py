"""The rejects report: one CSV row per refused lead (line, email, reason), safe to open in a spreadsheet.

It is written to a scratch file and only published (moved or uploaded where it belongs) once the import
succeeds, so a failed import leaves no half-written report behind.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

# Cells starting with these run as formulas in spreadsheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
HEADER = ("line", "email", "reason")
ABANDONED_AFTER_S = 3600  # a scratch report older than this belongs to an import that is gone


def spreadsheet_safe(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


class RejectsTarget(Protocol):
    """Where a finished report goes; `location` is what the import record shows."""

    location: str

    def scratch(self) -> Path: ...

    def publish(self, written: Path) -> None: ...

    def remove(self) -> None:
        """Delete a report an earlier import of the same file left: this import rejected nothing."""
        ...


class LocalRejects:
    """A report in a folder; the scratch file sits beside it, so publishing is one atomic rename."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def scratch(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sweep_abandoned()
        return self.path.parent / f".{self.path.name}.{secrets.token_hex(4)}.part"

    def publish(self, written: Path) -> None:
        os.replace(written, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._sweep_abandoned()

    def _sweep_abandoned(self) -> None:
        """Scratch files of this report left by a killed import (no `finally` runs after SIGKILL). Only old
        ones: a concurrent import of the same file may be writing its own right now."""
        cutoff = time.time() - ABANDONED_AFTER_S
        for part in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.part"):
            with contextlib.suppress(OSError):  # another import swept it first
                if part.stat().st_mtime < cutoff:
                    part.unlink()


class RejectsWriter:
    """Opens its scratch file on the first reject: an import without rejects writes no report."""

    def __init__(self, target: RejectsTarget | None) -> None:
        self.target = target
        self._scratch: Path | None = None
        self._file: io.TextIOWrapper | None = None
        self._writer: csv._writer | None = None  # type: ignore[name-defined]

    def write(self, rows: list[tuple[int, str, str]]) -> None:
        if self.target is None or not rows:
            return
        if self._writer is None:
            self._scratch = self.target.scratch()
            self._file = open(self._scratch, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._file)
            self._writer.writerow(HEADER)
        self._writer.writerows((line, spreadsheet_safe(email), reason) for line, email, reason in rows)

    def publish(self) -> str | None:
        """Put the finished report in place; returns its location, or None when nothing was rejected (then a
        report from an earlier version of the file goes, so what is there always matches the last import)."""
        if self.target is None:
            return None
        if self._file is None or self._scratch is None:
            self.target.remove()
            return None
        self._file.close()
        self.target.publish(self._scratch)
        return self.target.location

    def discard(self) -> None:
        if self._file is not None and self._scratch is not None:
            self._file.close()
            self._scratch.unlink(missing_ok=True)
