"""Reading lead files as people export them: the encoding, the delimiter, and where each record starts.

The csv module (not pandas) parses the text, because a quoted field may span several lines and the rejects
report must name the line of the ORIGINAL file where each record starts; `csv.reader.line_num` tells us.
Every physical line is bounded, so a file that is one 2 GB line fails fast instead of filling memory.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from outreach_pipeline.core.errors import InvalidInputError

SNIFF_BYTES = 64 * 1024
SCAN_BLOCK_BYTES = 1024 * 1024
MAX_LINE_CHARS = 1_000_000  # no lead row is a megabyte long; such a line means "not a lead file"
MAX_FIELD_CHARS = 100_000  # also stops an unclosed quote from swallowing the rest of the file
DELIMITERS = (",", ";", "\t", "|")
# Share of C0 control bytes (other than tab, CR, LF) above which a file is binary, not text.
BINARY_CONTROL_SHARE = 0.01
BINARY_MIN_CONTROLS = 8  # a stray bell character in a short list is a bad cell, not a binary file
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Bytes that cp1252 leaves undefined: a file with them is Latin-1 (ISO-8859-1), not cp1252.
_UNDEFINED_IN_CP1252 = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")

csv.field_size_limit(MAX_FIELD_CHARS)


@dataclass
class RecordChunk:
    """Records of a file, each padded to the header's width, with the file line where it starts."""

    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    # Records with more non-empty cells than the header has columns: (line, cells).
    too_wide: list[tuple[int, list[str]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.too_wide)


@dataclass
class LeadFile:
    """An opened lead file: its header cells and an iterator over chunks of records."""

    encoding: str
    delimiter: str
    headers: list[str]
    chunks: Iterator[RecordChunk]


# --- encoding ------------------------------------------------------------------------------------


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 text without a BOM shows NUL in every other byte (ASCII letters)."""
    even, odd = head[0:2000:2], head[1:2000:2]
    if len(head) >= 4 and odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if len(head) >= 4 and even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def _is_utf8(stream: BinaryIO) -> bool:
    """Decode the whole file once: a sample can miss the one accented letter at the very end."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while block := stream.read(SCAN_BLOCK_BYTES):
            decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    finally:
        stream.seek(0)
    return True


def _single_byte_encoding(stream: BinaryIO) -> str:
    try:
        while block := stream.read(SCAN_BLOCK_BYTES):
            if _UNDEFINED_IN_CP1252.search(block):
                return "latin-1"
        return "cp1252"
    finally:
        stream.seek(0)


def detect_encoding(stream: BinaryIO) -> str:
    """UTF-8 (BOM or not), UTF-16 (Excel "Unicode text"), or Windows-1252/Latin-1; refuses binary data."""
    head = stream.read(SNIFF_BYTES)
    stream.seek(0)
    if not head.strip():
        raise InvalidInputError("The file is empty.")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    utf16 = _utf16_without_bom(head)
    if utf16:
        return utf16
    controls = len(_CONTROL_BYTES.findall(head))
    if b"\x00" in head or controls > max(BINARY_MIN_CONTROLS, BINARY_CONTROL_SHARE * len(head)):
        raise InvalidInputError("This is not a CSV file (it contains binary data).")
    if _is_utf8(stream):
        return "utf-8-sig"
    return _single_byte_encoding(stream)


# --- lines, delimiter and records ------------------------------------------------------------------


def _bounded_lines(text: io.TextIOBase) -> Iterator[str]:
    number = 0
    while line := text.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise InvalidInputError(
                f"Line {number} is longer than {MAX_LINE_CHARS:,} characters: this is not a lead file."
            )
        yield line


def sniff_delimiter(header_line: str) -> str:
    """The candidate that splits the header most often, counted outside quotes; a comma by default."""
    unquoted = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: unquoted.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _is_blank(record: list[str]) -> bool:
    return not any(cell.strip() for cell in record)


def _chunks(reader: csv.Reader, width: int, chunk_rows: int, after_header: int) -> Iterator[RecordChunk]:
    chunk = RecordChunk()
    previous_end = after_header  # line_num counts physical lines consumed so far
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if len(record) == width:
                chunk.rows.append(record)
                chunk.lines.append(start)
            elif _is_blank(record):
                continue  # blank lines and rows of empty cells are layout, not leads
            elif len(record) < width:
                chunk.rows.append(record + [""] * (width - len(record)))
                chunk.lines.append(start)
            elif _is_blank(record[width:]):
                chunk.rows.append(record[:width])  # trailing empty columns that spreadsheets add
                chunk.lines.append(start)
            else:
                chunk.too_wide.append((start, record))
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = RecordChunk()
    except csv.Error as error:
        raise InvalidInputError(f"Line {previous_end + 1} could not be read as CSV: {error}.") from error
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"The file is not valid text in its encoding: {error}.") from error
    if len(chunk):
        yield chunk


def open_lead_file(stream: BinaryIO, chunk_rows: int) -> LeadFile:
    """Detect the format and read the header; raises InvalidInputError for what is not a CSV of rows."""
    encoding = detect_encoding(stream)
    text = io.TextIOWrapper(stream, encoding=encoding, newline="")
    lines = _bounded_lines(text)
    try:
        skipped = 0
        for line in lines:
            if line.strip():
                break
            skipped += 1
        else:
            raise InvalidInputError("The file is empty.")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"The file is not valid text in its encoding: {error}.") from error
    delimiter = sniff_delimiter(line)
    # The header line is read again through the csv module so quoted header cells parse the same way.
    reader = csv.reader(_prepend(line, lines), delimiter=delimiter)
    headers = next(reader)
    while headers and not headers[-1].strip():
        headers.pop()  # trailing empty header cells
    header_end = skipped + reader.line_num
    return LeadFile(encoding, delimiter, [h.strip() for h in headers],
                    _chunks(reader, len(headers), chunk_rows, header_end))


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
