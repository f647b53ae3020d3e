"""Reading lead files as people export them: the encoding, the delimiter, and where each record starts.

The rejects report must name the line of the ORIGINAL file where each record starts, and a quoted field may
span several lines. Records are read on one of two paths, which give the same cells and line numbers:

- The csv module (not pandas) reads the text line by line; `csv.reader.line_num` tells where each record
  ends. It reads the header of every file and all the records of files that are not UTF-8.
- In UTF-8 files the records after the header are cut into blocks of whole lines (a few MB). pyarrow's CSV
  reader (C++, no Python string per cell) reads a block when each of its lines is one record of exactly the
  header's width, and agrees with the csv module on every such line; record i is then on the block's
  first line + i. Any other block (a quoted field spanning lines, a blank line, a row too wide or short, a
  lone "\\r" line break, a NUL, a very long line) is halved while pyarrow can read one half, so that one
  odd line leaves a small piece; a piece pyarrow cannot read goes to the csv module, which also takes the
  lines of the next pieces when a record goes on past its piece.

Every physical line is bounded, so a file that is one 2 GB line fails fast instead of filling memory.
"""

from __future__ import annotations

import codecs
import csv
import gc
import operator
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, compress, islice
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as arrow_csv

from outreach_pipeline.core.errors import InvalidInputError

SNIFF_BYTES = 64 * 1024
SCAN_BLOCK_BYTES = 1024 * 1024
READ_BYTES = 8192  # io.TextIOWrapper's chunk: decoding the same chunks makes the same error messages
TEXT_BLOCK_CHARS = 1024 * 1024  # text is split into lines a block at a time, in C
MAX_LINE_CHARS = 1_000_000  # no lead row is a megabyte long; such a line means "not a lead file"
# A record (all its lines) no lead reaches: it bounds the memory an unclosed quote can take. Long cells below
# it are the schema's business (rejected as too long, the other rows stored).
MAX_FIELD_CHARS = MAX_LINE_CHARS
BYTE_BLOCK_BYTES = 4 * 1024 * 1024  # UTF-8 records are read in blocks of whole lines of about this size
MIN_SPLIT_BYTES = 64 * 1024  # a block pyarrow cannot read is halved down to about this size (see _split)
MAX_ODD_LINES_TO_SPLIT = 8  # ... unless more of its lines than this look odd: then it all goes to the csv module
SKIP_AFTER_DENSE = 3  # blocks left to the csv module, untried, after such a block
# A line of more bytes than this has more than MAX_LINE_CHARS characters (UTF-8 takes at most 4 per character).
_MAX_LINE_BYTES = 4 * MAX_LINE_CHARS
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # where universal newlines split lines, in bytes
DELIMITERS = (",", ";", "\t", "|")  # in order of preference when all else is equal
SNIFF_LINES = 20  # lines after the header that help pick the delimiter
# Share of C0 control bytes (other than tab, CR, LF) above which a file is binary, not text.
BINARY_CONTROL_SHARE = 0.01
BINARY_MIN_CONTROLS = 8  # a stray bell character in a short list is a bad cell, not a binary file
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Bytes that cp1252 leaves undefined: a file with them is Latin-1 (ISO-8859-1), not cp1252.
_UNDEFINED_IN_CP1252 = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")

# str.splitlines also breaks lines at these; universal newlines (and so the original line numbers) do not.
_OTHER_LINE_BREAKS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")  # the slow, exact split for text holding one of them
_NEXT_LINE = partial(operator.add, 1)
# Fed to the csv reader after the file's last line. It comes back as a record of its own, unless the file
# ended inside a quoted field: then it is the end of that field's text. (NUL is in no lead file we read.)
_END_OF_FILE = "\x00end of file\x00"

csv.field_size_limit(MAX_FIELD_CHARS)


@dataclass
class RecordChunk:
    """Records of a file, each padded to the header's width, with the file line where it starts."""

    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] | np.ndarray = field(default_factory=list)
    # Records with more non-empty cells than the header has columns: (line, cells).
    too_wide: list[tuple[int, list[str]]] = field(default_factory=list)
    # Records read by pyarrow instead of `rows`: a string column per header cell, record i on lines[i].
    table: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.rows) + len(self.too_wide) + (self.table.num_rows if self.table is not None else 0)


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
    """Check the whole file once: a sample can miss the one accented letter at the very end. Arrow checks each
    block in place, at twice the speed of decoding it into a string we would throw away."""
    carried = b""  # a character cut in two by the end of a block goes with the next block
    try:
        while block := stream.read(SCAN_BLOCK_BYTES):
            data = carried + block if carried else block
            cut = _last_whole_character_end(data)
            carried = data[cut:]
            _as_arrow_text(data, cut).validate(full=True)
    except pa.ArrowInvalid:
        return False
    finally:
        stream.seek(0)
    return not carried


def _last_whole_character_end(data: bytes) -> int:
    """Where an incomplete last character starts (len(data) when the data ends on a whole one): the lead byte
    of a multi-byte sequence among the last four bytes, counting back over continuation bytes (10xxxxxx),
    whose sequence needs more bytes than follow it. Anything else is left for the check to judge."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:
            needs = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if byte >= 0xC0 and needs > back else len(data)
    return len(data)


def _as_arrow_text(data: bytes, length: int) -> pa.Array:
    """The first `length` bytes of `data` as one Arrow string, without a copy (nothing is checked yet)."""
    offsets = np.array([0, length], dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


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


# --- text and lines --------------------------------------------------------------------------------


def _text_blocks(stream: BinaryIO, encoding: str) -> Iterator[str]:
    """The file's text in blocks of about TEXT_BLOCK_CHARS, decoded in the same byte chunks as io.TextIOWrapper,
    so that a decoding error names the same position, and comes after the text before it."""
    read = getattr(stream, "read1", stream.read)
    decode = codecs.getincrementaldecoder(encoding)().decode
    parts: list[str] = []
    size = 0
    while True:
        data = read(READ_BYTES)
        try:
            text = decode(data, final=not data)
        except UnicodeDecodeError:
            yield "".join(parts)  # the lines before the bad bytes are parsed first, as when reading line by line
            raise
        parts.append(text)
        size += len(text)
        if not data:
            break
        if size >= TEXT_BLOCK_CHARS:
            yield "".join(parts)
            parts, size = [], 0
    yield "".join(parts)


def _split_lines(text: str) -> list[str]:
    """Lines with their endings, split where universal newlines split (\\r\\n, \\r, \\n) and nowhere else."""
    if any(other in text for other in _OTHER_LINE_BREAKS):
        return _LINE.findall(text)
    return text.splitlines(keepends=True)  # C speed, and exact when no other line break is in the text


def _too_long(number: int) -> InvalidInputError:
    return InvalidInputError(f"Line {number} is longer than {MAX_LINE_CHARS:,} characters: this is not a lead file.")


def _bounded_line_blocks(blocks: Iterator[str]) -> Iterator[list[str]]:
    """The lines of the text, a list per block; fails at the first line longer than MAX_LINE_CHARS, after the
    lines before it, and without holding more than a block beyond that limit."""
    before = 0  # lines in earlier blocks
    carry = ""  # the last line of the previous block, which may continue in this one
    for block in blocks:
        lines = _split_lines(carry + block)
        # A last line without "\n" may go on in the next block (a "\r" may be the first half of "\r\n").
        carry = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        if max(map(len, lines), default=0) > MAX_LINE_CHARS:
            first = next(i for i, line in enumerate(lines) if len(line) > MAX_LINE_CHARS)
            yield lines[:first]
            raise _too_long(before + first + 1)
        yield lines
        before += len(lines)
        if len(carry) > MAX_LINE_CHARS:
            raise _too_long(before + 1)
    if carry:
        yield [carry]


# --- delimiter and records -------------------------------------------------------------------------


def sniff_delimiter(header_line: str, sample: list[str] | None = None) -> str:
    """The candidate that splits the header and, where the header alone is ambiguous, the sample of lines
    after it the same way; a comma by default. Counted outside quotes. A header like
    "Company, Inc.<TAB>Email<TAB>Name, Full" splits twice on both: the rows, split twice by tabs only, decide."""
    counts = {d: _unquoted(header_line).count(d) for d in DELIMITERS}
    rows = [_unquoted(line) for line in sample or [] if line.strip()]

    def agreement(delimiter: str) -> float:  # share of the sample's lines with the header's count
        return sum(row.count(delimiter) == counts[delimiter] for row in rows) / len(rows) if rows else 1.0

    candidates = [d for d in DELIMITERS if counts[d]]
    if not candidates:
        return ","
    return max(candidates, key=lambda d: (agreement(d), counts[d], -DELIMITERS.index(d)))


def _unquoted(line: str) -> str:
    return re.sub(r'"[^"]*"', "", line)


def _is_blank(record: list[str]) -> bool:
    return not any(cell.strip() for cell in record)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a chunk of records is parsed and turned into columns.

    Each record is a new list, so the collector would run every few hundred records and walk all the live
    ones and their cells again and again: that nearly doubles the cost of parsing. Records hold no reference
    cycles and are freed (by reference counting) once their chunk is in columns, so with the collector paused
    until then it never walks them. The switch is process-wide: it is held for one chunk at a time and turned
    back on only if it was on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_records(reader: csv.Reader, count: int, records: list[list[str]], ends: list[int]) -> None:
    """Up to `count` records, each with the physical line where it ends (a quoted field may span lines)."""
    add_record, add_end = records.append, ends.append
    for record in islice(reader, count):
        add_record(record)
        add_end(reader.line_num)


def _drop_end_of_file(records: list[list[str]], ends: list[int], previous_end: int) -> bool:
    """Remove the end-of-file marker when it is the last record read; True when it was there. Fails the
    import when the marker ended up inside a cell: a quote was opened and never closed, so every line after
    it was read as that cell's text, and no row after it can be told apart."""
    last = records[-1] if records else None
    if not last or not last[-1].endswith(_END_OF_FILE):  # a blank line reads as []
        return False
    if last != [_END_OF_FILE]:
        start = ends[-2] + 1 if len(ends) > 1 else previous_end + 1
        raise InvalidInputError(
            f"Line {start} opens a quoted field that is never closed: the rest of the file would be read as "
            "that one cell. Close the quote (or remove it) and import the file again.")
    records.pop()
    ends.pop()
    return True


def _sort_records(chunk: RecordChunk, records: list[list[str]], starts: list[int], width: int) -> None:
    """Add records to the chunk as rows of the header's width; only records of another width cost Python work.
    Blank lines become rows of empty cells, which the frame drops with every other such row (core/leads.py)."""
    sizes = np.fromiter(map(len, records), dtype=np.intp, count=len(records))
    odd = np.flatnonzero(sizes != width).tolist()
    if not odd:
        chunk.rows += records
        chunk.lines += starts
        return
    keep = [True] * len(records)
    for i in odd:
        record = records[i]
        if len(record) < width:
            records[i] = record + [""] * (width - len(record))
        elif _is_blank(record[width:]):
            records[i] = record[:width]  # trailing empty columns that spreadsheets add
        else:
            keep[i] = False
            chunk.too_wide.append((starts[i], record))
    chunk.rows += compress(records, keep)
    chunk.lines += compress(starts, keep)


def _fill(chunk: RecordChunk, reader: csv.Reader, width: int, chunk_rows: int, previous_end: int,
          lines_before: int, feed: _LineFeed | None = None) -> tuple[int, bool]:
    """Read records into the chunk until it holds `chunk_rows` or the file (or the `feed`'s lines) ends.

    Returns the line where the last record read ended, and whether the file (or feed) has ended. The records
    are read in batches whose lists die with this call: only the chunk keeps the records alive. The reader
    counts lines from the header; `lines_before` (blank lines, a preamble) makes them the file's lines.
    """
    ends: list[int] = []
    try:
        while len(chunk) < chunk_rows:
            wanted = chunk_rows - len(chunk)
            if feed is not None:
                # No more records than lines handed out, so the reader stops at the feed's last record.
                wanted = min(wanted, feed.last_line - lines_before - reader.line_num)
                if wanted <= 0:
                    return previous_end, True
            records: list[list[str]] = []
            ends = []
            _read_records(reader, wanted, records, ends)
            if lines_before:
                ends[:] = [end + lines_before for end in ends]
            at_end = _drop_end_of_file(records, ends, previous_end)
            if records:
                # A record starts on the line after the one where the previous record (even a blank one) ended.
                _sort_records(chunk, records, [previous_end + 1, *map(_NEXT_LINE, ends[:-1])], width)
                previous_end = ends[-1]
            if at_end or len(records) < wanted:
                return previous_end, True
    except csv.Error as error:
        last_end = ends[-1] if ends else previous_end
        raise InvalidInputError(f"Line {last_end + 1} could not be read as CSV: {error}.") from error
    return previous_end, False


def _chunks(reader: csv.Reader, width: int, chunk_rows: int, lines_before: int) -> Iterator[RecordChunk]:
    # The header ends at the reader's line_num (it counts the physical lines it consumed) after those before it.
    previous_end, ended = lines_before + reader.line_num, False
    while not ended:
        chunk = RecordChunk()
        try:
            previous_end, ended = _fill(chunk, reader, width, chunk_rows, previous_end, lines_before)
        except UnicodeDecodeError as error:
            raise InvalidInputError(f"The file is not valid text in its encoding: {error}.") from error
        if len(chunk):
            yield chunk


# --- UTF-8 records: pyarrow where it reads them as the csv module does ----------------------------------


@dataclass
class _Block:
    """Whole lines of the file (the last perhaps without a line break, at the end of the file)."""

    data: bytes
    first_line: int  # the file line where the block starts
    lines: int
    lone_cr: bool  # some line ends with a "\r" alone (classic Mac)
    longest: int  # bytes in the longest line, its line break included (exact when no "\r" is alone)


def _block(data: bytes, first_line: int) -> _Block:
    """The block with its lines counted, in numpy: no Python work per line."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    lone_cr = 0
    if b"\r" in data:
        after = np.flatnonzero(buf == ord("\r")) + 1
        inside = after[after < len(buf)]
        lone_cr = len(after) - len(inside) + int(np.count_nonzero(buf[inside] != ord("\n")))
    lines = len(ends) + lone_cr + (not data.endswith((b"\n", b"\r")))
    longest = int(np.diff(ends, prepend=-1, append=len(data) - 1).max())
    return _Block(data, first_line, lines, bool(lone_cr), longest)


def _offset_after_lines(stream: BinaryIO, count: int) -> int:
    """The byte offset where line `count + 1` starts (the end of the file when it has no more lines)."""
    stream.seek(0)
    offset = 0
    while count and (data := stream.read(SCAN_BLOCK_BYTES)):
        while data.endswith(b"\r") and (more := stream.read(1)):  # a "\r\n" split between two reads
            data += more
        for match in _LINE_BREAK.finditer(data):
            count -= 1
            if not count:
                return offset + match.end()
        offset += len(data)
    return offset


def _byte_blocks(stream: BinaryIO, offset: int, first_line: int) -> Iterator[_Block]:
    """The file from `offset` (where line `first_line` starts) in blocks of whole lines. A line too long
    for a lead file fails when its block is asked for, after the blocks before it."""
    stream.seek(offset)
    carry = b""  # the start of a line that goes on in the next read
    while data := stream.read(BYTE_BLOCK_BYTES):
        data = carry + data if carry else data
        # After the last line break that cannot be the first half of a "\r\n".
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if not cut:
            if len(data) > _MAX_LINE_BYTES:
                raise _too_long(first_line)
            carry = data
            continue
        block, carry = _block(data[:cut], first_line), data[cut:]
        first_line += block.lines
        yield block
    if carry:
        yield _block(carry, first_line)


def _arrow_table(block: _Block, delimiter: str, width: int) -> pa.Table | None:
    """The block's records as `width` string columns, when pyarrow reads them as the csv module would:
    every line one record (no quoted field spans lines) of the header's width, no lone "\\r" line break, no
    NUL and no line near the length limits. None otherwise."""
    data = block.data
    if block.lone_cr or block.longest >= MAX_FIELD_CHARS or b"\x00" in data:
        return None
    names = [str(i) for i in range(width)]
    # pyarrow ends a quoted field left open at the end of its input as if it were closed: a last record of
    # empty cells after the block's lines is read as one only when no quote is open before it.
    data += (b"" if data.endswith(b"\n") else b"\n") + delimiter.encode() * (width - 1) + b"\n"
    try:
        table = arrow_csv.read_csv(
            pa.py_buffer(data),
            read_options=arrow_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
            # newlines_in_values: a quoted field spanning lines is read as the csv module reads it, one record
            # over several lines, so that the count of records below tells it.
            parse_options=arrow_csv.ParseOptions(delimiter=delimiter, quote_char='"', double_quote=True,
                                                 escape_char=False, newlines_in_values=True,
                                                 ignore_empty_lines=False),
            convert_options=arrow_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.large_string()),
                                                     strings_can_be_null=False))
    except pa.ArrowInvalid:  # a record of another width, or a quote left open at the block's end
        return None
    return table.slice(0, block.lines) if table.num_rows == block.lines + 1 else None


def _halves(block: _Block) -> tuple[_Block, _Block] | None:
    """The block cut at the last line break before its middle; None when there is none."""
    cut = block.data.rfind(b"\n", 0, len(block.data) // 2) + 1
    if not cut:
        return None
    first = _block(block.data[:cut], block.first_line)
    return first, _block(block.data[cut:], block.first_line + first.lines)


def _odd_lines(block: _Block) -> int:
    """Lines with an odd number of quotes (a quoted field may open or close there) or with nothing on them:
    about how many lines of the block pyarrow cannot read, counted without reading it."""
    buf = np.frombuffer(block.data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    quotes = np.bincount(np.searchsorted(ends, np.flatnonzero(buf == ord('"'))), minlength=len(ends) + 1)
    blank = np.diff(ends, prepend=-1) <= 2  # "\n" or "\r\n" alone
    return int(np.count_nonzero(quotes & 1)) + int(np.count_nonzero(blank))


def _pieces(blocks: Iterator[_Block], delimiter: str, width: int) -> Iterator[tuple[_Block, pa.Table | None]]:
    """The blocks, or pieces of them, each with the table pyarrow read from it, or None for the csv module.
    Where odd lines are everywhere, pyarrow only tries one block in SKIP_AFTER_DENSE + 1, so that a file it
    cannot read costs little more than the csv module alone."""
    skip = 0
    for block in blocks:
        if skip:
            skip -= 1
            yield block, None
            continue
        table = _arrow_table(block, delimiter, width)
        if table is None and _odd_lines(block) > MAX_ODD_LINES_TO_SPLIT:
            skip = SKIP_AFTER_DENSE
            yield block, None
        else:
            yield from _split(block, table, delimiter, width)


def _split(block: _Block, table: pa.Table | None, delimiter: str,
           width: int) -> Iterator[tuple[_Block, pa.Table | None]]:
    """A block pyarrow could not read is halved, and the half it could not read halved again, so that one
    odd line (a blank line at the end of the file, a note spanning lines) leaves a small piece to the csv
    module. When neither half can be read, odd lines are everywhere: the halving stops."""
    halves = _halves(block) if table is None and len(block.data) >= 2 * MIN_SPLIT_BYTES else None
    if halves is None:
        yield block, table
        return
    tables = [_arrow_table(half, delimiter, width) for half in halves]
    if tables == [None, None]:
        yield from zip(halves, tables, strict=True)
        return
    for half, half_table in zip(halves, tables, strict=True):
        yield from _split(half, half_table, delimiter, width)


class _TableRows:
    """Records of both paths as tables, in the file's order, handed out as chunks of `chunk_rows` records
    (small pieces read by the csv module do not make small chunks, which cost more each downstream)."""

    def __init__(self, chunk_rows: int) -> None:
        self.chunk_rows = chunk_rows
        self.tables: list[pa.Table] = []
        self.lines: list[np.ndarray] = []
        self.too_wide: list[tuple[int, list[str]]] = []
        self.rows = 0

    def add(self, table: pa.Table, lines: np.ndarray, too_wide: list[tuple[int, list[str]]] | None = None,
            ) -> Iterator[RecordChunk]:
        self.tables.append(table)
        self.lines.append(lines)
        self.too_wide += too_wide or []
        self.rows += table.num_rows
        while self.rows >= self.chunk_rows:
            yield self._take(self.chunk_rows)

    def flush(self) -> Iterator[RecordChunk]:
        if self.rows or self.too_wide:
            yield self._take(self.rows)

    def _take(self, count: int) -> RecordChunk:
        table, lines = pa.concat_tables(self.tables), np.concatenate(self.lines)
        rest, rest_lines = table.slice(count), lines[count:]
        # Too-wide records go with the rows around them, as they do when the csv module reads the whole file.
        before = rest_lines[0] if len(rest_lines) else np.inf
        chunk = RecordChunk(lines=lines[:count], table=table.slice(0, count).combine_chunks(),
                            too_wide=[record for record in self.too_wide if record[0] < before])
        self.too_wide = self.too_wide[len(chunk.too_wide):]
        self.tables, self.lines = ([rest], [rest_lines]) if len(rest_lines) else ([], [])
        self.rows -= count
        return chunk


def rows_table(rows: list[list[str]], width: int) -> pa.Table:
    """Records read by the csv module (each of the header's width) as a table like pyarrow's. All cells become
    one Arrow array, row after row, and each column is taken from it by position: one conversion from Python
    strings, instead of transposing the rows in Python (zip(*rows)) and converting per column."""
    cells = pa.array(list(chain.from_iterable(rows)), type=pa.large_string())
    if len(cells) != width * len(rows):
        raise ValueError("The rows of a batch differ in width.")
    starts = np.arange(0, len(cells), width)
    return pa.table([cells.take(starts + i) for i in range(width)], names=[str(i) for i in range(width)])


class _LineFeed:
    """Lines for the csv module: those of one block and, when a record goes on past it, those of the next
    blocks, then the end-of-file marker when the file ends inside a record. `last_line` is the file line of
    the last line handed out (or about to be: a block's are counted as soon as the reader may need them)."""

    def __init__(self, block: _Block, pieces: Iterator[tuple[_Block, pa.Table | None]]) -> None:
        self.first, self.pieces = block, pieces
        self.last_line = block.first_line - 1 + block.lines

    def line_lists(self) -> Iterator[list[str]]:
        block: _Block | None = self.first
        while block is not None:
            yield from _bounded_lines(block)
            block, _ = next(self.pieces, (None, None))  # a record goes on past the block: its table is wrong
            if block is not None:
                self.last_line += block.lines
        self.last_line += 1
        yield [_END_OF_FILE]


def _bounded_lines(block: _Block) -> Iterator[list[str]]:
    """The block's lines; fails at the first line longer than MAX_LINE_CHARS, after the lines before it."""
    lines = _split_lines(block.data.decode("utf-8"))
    if max(map(len, lines), default=0) > MAX_LINE_CHARS:
        first = next(i for i, line in enumerate(lines) if len(line) > MAX_LINE_CHARS)
        yield lines[:first]
        raise _too_long(block.first_line + first)
    yield lines


def _python_chunks(block: _Block, pieces: Iterator[tuple[_Block, pa.Table | None]], delimiter: str, width: int,
                   chunk_rows: int) -> Iterator[RecordChunk]:
    """The records of a block pyarrow did not read, by the csv module, as for any other file."""
    feed = _LineFeed(block, pieces)
    reader = csv.reader(chain.from_iterable(feed.line_lists()), delimiter=delimiter)
    lines_before = previous_end = block.first_line - 1
    ended = False
    while not ended:
        chunk = RecordChunk()
        try:
            previous_end, ended = _fill(chunk, reader, width, chunk_rows, previous_end, lines_before, feed)
        except UnicodeDecodeError as error:
            raise InvalidInputError(f"The file is not valid text in its encoding: {error}.") from error
        if len(chunk):
            yield chunk


def _python_tables(block: _Block, pieces: Iterator[tuple[_Block, pa.Table | None]], delimiter: str, width: int,
                   tables: _TableRows) -> Iterator[RecordChunk]:
    """`_python_chunks` as tables, joined to the records around them in chunks of `chunk_rows`."""
    for chunk in _python_chunks(block, pieces, delimiter, width, tables.chunk_rows):
        table = rows_table(chunk.rows, width)
        chunk.rows.clear()
        yield from tables.add(table, np.asarray(chunk.lines, dtype=np.int64), chunk.too_wide)


def _utf8_chunks(blocks: Iterator[_Block], delimiter: str, width: int, chunk_rows: int) -> Iterator[RecordChunk]:
    """The records of a UTF-8 file after its header: by pyarrow block by block, by the csv module for the
    blocks pyarrow cannot read exactly as it would (see the module's docstring)."""
    tables = _TableRows(chunk_rows)
    pieces = _pieces(blocks, delimiter, width)
    for block, table in pieces:
        if table is not None:
            lines = np.arange(block.first_line, block.first_line + block.lines, dtype=np.int64)
            yield from tables.add(table, lines)
        else:
            yield from _python_tables(block, pieces, delimiter, width, tables)
    yield from tables.flush()


def _cells(line: str, after: list[str]) -> list[str]:
    return next(csv.reader([line], delimiter=sniff_delimiter(line, after)), [])


def _after_preamble(first: str, sample: list[str], skipped: int, is_header: Callable[[list[str]], bool] | None,
                    ) -> tuple[str, list[str], int]:
    """The header line, the sample after it and the lines before it. Some exports open with notes
    (LinkedIn's Connections.csv: "Notes:" and a paragraph): when the first line is no header and a later
    line of the sample is, the lines before that one are a preamble, not rows."""
    if is_header is None or is_header(_cells(first, sample)):
        return first, sample, skipped
    for at, candidate in enumerate(sample):
        if candidate.strip() and is_header(_cells(candidate, sample[at + 1:])):
            return candidate, sample[at + 1:], skipped + 1 + at
    return first, sample, skipped


def open_lead_file(stream: BinaryIO, chunk_rows: int, is_header: Callable[[list[str]], bool] | None = None,
                   ) -> LeadFile:
    """Detect the format and read the header; raises InvalidInputError for what is not a CSV of rows.
    `is_header` tells a header line's cells from a preamble's (see _after_preamble)."""
    encoding = detect_encoding(stream)
    # Lines come from lists in C (chain), not from a Python generator per line: the csv module pulls them fast.
    lines = chain.from_iterable(_bounded_line_blocks(_text_blocks(stream, encoding)))
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
    try:
        sample = list(islice(lines, SNIFF_LINES))  # read again below, from this list
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"The file is not valid text in its encoding: {error}.") from error
    line, sample, skipped = _after_preamble(line, sample, skipped, is_header)
    delimiter = sniff_delimiter(line, sample)
    # The header line is read again through the csv module so quoted header cells parse the same way.
    reader = csv.reader(chain((line,), sample, lines, (_END_OF_FILE,)), delimiter=delimiter)
    headers = next(reader)
    if headers[-1].endswith(_END_OF_FILE):
        raise InvalidInputError("The header line opens a quoted field that is never closed.")
    # Trailing header cells without a name stay columns (column_N): spreadsheets add empty ones, which
    # cost nothing, and a column someone forgot to name keeps its data.
    return LeadFile(encoding, delimiter, [h.strip() for h in headers],
                    _records(stream, encoding, delimiter, reader, len(headers), chunk_rows, skipped))


def _records(stream: BinaryIO, encoding: str, delimiter: str, reader: csv.Reader, width: int, chunk_rows: int,
             lines_before: int) -> Iterator[RecordChunk]:
    """The records after the header, which `reader` has read (after `lines_before` lines)."""
    if encoding != "utf-8-sig":
        return _chunks(reader, width, chunk_rows, lines_before)
    header_end = lines_before + reader.line_num  # the reader's lines, read ahead, are read again as bytes
    blocks = _byte_blocks(stream, _offset_after_lines(stream, header_end), header_end + 1)
    return _utf8_chunks(blocks, delimiter, width, chunk_rows)
