"""The two ways a UTF-8 lead file's records are read (core/lead_file.py): pyarrow for blocks whose lines are
each one regular record, the csv module for every other block. Both must give the same frames, line numbers,
too-wide rows and errors; these tests compare them on files that mix regular and irregular blocks, with
blocks of a few hundred bytes so that one small file holds many of them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd
import pytest

from outreach_pipeline.core import lead_file
from outreach_pipeline.core.errors import InvalidInputError
from outreach_pipeline.core.leads import _file_batches

BLOCK_BYTES = 300


def _regular(first: int, count: int) -> list[str]:
    return [f'lead{n}@acme.example,Lead {n},"Acme, Inc"' for n in range(first, first + count)]


# Regular rows around a block of each kind the csv module must read, then regular rows again (CRLF too).
MIXED = "\n".join([
    "email,first_name,company",
    *_regular(0, 30),
    'quoted@acme.example,Quo,"two\nlines"',  # a quoted field spanning lines: every line after moves down one
    *_regular(30, 30),
    "",  # a blank line
    *_regular(60, 30),
    "wide@acme.example,Wide,Acme,extra",  # too many columns
    "short@acme.example,Short",  # too few: padded
    "trail@acme.example,Trail,Acme,,",  # trailing empty columns that spreadsheets add
    "   ",
    ",,",
    *_regular(90, 30),
]) + "\r\n" + "\r\n".join(_regular(120, 30)) + "\r\nmac@acme.example,Mac,Acme\r" + "\n".join(_regular(150, 30))


def _read(data: bytes, chunk_rows: int = 7) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    frames, too_wide = [], []
    for batch in _file_batches(io.BytesIO(data), chunk_rows):
        frames.append(batch.frame)
        too_wide += batch.too_wide
    return pd.concat([frame for frame in frames if len(frame)]), too_wide


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Blocks of BLOCK_BYTES, halved down to 40 bytes; yields, per block or piece, whether pyarrow read it."""
    monkeypatch.setattr(lead_file, "BYTE_BLOCK_BYTES", BLOCK_BYTES)
    monkeypatch.setattr(lead_file, "MIN_SPLIT_BYTES", 40)
    read_by_arrow: list[bool] = []
    arrow_table = lead_file._arrow_table

    def spied(*args: object) -> object:
        table = arrow_table(*args)  # type: ignore[arg-type]
        read_by_arrow.append(table is not None)
        return table

    monkeypatch.setattr(lead_file, "_arrow_table", spied)
    yield read_by_arrow


def _csv_module_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lead_file, "_arrow_table", lambda *args: None)


def test_pyarrow_and_the_csv_module_read_a_mixed_file_the_same(small_blocks: list[bool],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = MIXED.encode()
    frame, too_wide = _read(data)
    assert any(small_blocks) and not all(small_blocks)  # both paths were taken

    _csv_module_only(monkeypatch)
    expected_frame, expected_too_wide = _read(data)

    pd.testing.assert_frame_equal(frame, expected_frame)
    assert too_wide == expected_too_wide
    assert len(frame) == 180 + 4  # the regular rows, "quoted", "short", "trail" and "mac"


def test_records_read_by_pyarrow_keep_their_file_lines(small_blocks: list[bool]) -> None:
    # Two blank lines and a preamble above the header: the first row is on line 6.
    data = ("\n\nNotes:\nExported today\n" + MIXED).encode("utf-8-sig")

    frame, too_wide = _read(data, chunk_rows=10_000)

    email = frame["email"]
    assert email[6] == "lead0@acme.example"
    assert email[35] == "lead29@acme.example"
    assert email[36] == "quoted@acme.example" and frame.at[36, "company"] == "two\nlines"
    assert email[38] == "lead30@acme.example"  # after the line the quoted field took
    assert email[67] == "lead59@acme.example"
    assert email[69] == "lead60@acme.example"  # after the blank line
    assert too_wide == [(99, "wide@acme.example", "too many columns")]
    assert (email[100], email[101]) == ("short@acme.example", "trail@acme.example")
    assert email[104] == "lead90@acme.example"  # after "   " and ",,", which are no rows
    assert (email[134], email[163]) == ("lead120@acme.example", "lead149@acme.example")  # CRLF
    assert (email[164], email[165]) == ("mac@acme.example", "lead150@acme.example")  # after a lone CR
    assert list(frame.index) == sorted(frame.index) and frame.index.is_unique
    assert frame.index[-1] == 194


def test_a_quote_left_open_at_the_end_of_a_block_is_read_on_into_the_next(
        small_blocks: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    # The opening line ends a block of its own: pyarrow would close the quote at the end of its input.
    opening = 'note@acme.example,Note,"' + "n" * (BLOCK_BYTES - 30)
    data = "\n".join(["email,first_name,company", opening, 'still the note"', *_regular(0, 20)]).encode()

    frame, _ = _read(data)

    assert frame.at[2, "company"] == "n" * (BLOCK_BYTES - 30) + "\nstill the note"
    assert frame["email"][4] == "lead0@acme.example"
    _csv_module_only(monkeypatch)
    pd.testing.assert_frame_equal(frame, _read(data)[0])


@pytest.mark.parametrize(("tail", "message"), [
    ('late@acme.example,Late,"never closed\n' + "".join(f"lead{n}@acme.example,Lead,Acme\n" for n in range(40)),
     "Line 42 opens a quoted field that is never closed: the rest of the file would be read as that one cell. "
     "Close the quote (or remove it) and import the file again."),
    ("x" * (lead_file.MAX_LINE_CHARS + 10) + "\n" + "\n".join(_regular(0, 5)),
     "Line 42 is longer than 1,000,000 characters: this is not a lead file."),
    ("é" * (lead_file.MAX_LINE_CHARS + 10) + "\n",  # more than a million characters, twice as many bytes
     "Line 42 is longer than 1,000,000 characters: this is not a lead file."),
])
def test_errors_after_blocks_pyarrow_read_name_the_same_line(small_blocks: list[bool], tail: str,
                                                             message: str) -> None:
    data = ("email,first_name,company\n" + "\n".join(_regular(0, 40)) + "\n" + tail).encode()

    with pytest.raises(InvalidInputError) as error:
        _read(data)

    assert error.value.message == message
    assert small_blocks[0]  # the rows before it were read by pyarrow


def test_a_long_line_under_the_limit_is_read_by_the_csv_module(small_blocks: list[bool]) -> None:
    note = "ü" * 600_000  # 1.2 MB but 600,000 characters: a long cell, not a broken file
    data = ("email,first_name,company\n" + "\n".join(_regular(0, 20)) + f"\nlong@acme.example,Long,{note}\n"
            + "\n".join(_regular(20, 20))).encode()

    frame, _ = _read(data)

    assert frame.at[22, "company"] == note
    assert frame["email"][23] == "lead20@acme.example"


def test_one_odd_line_leaves_a_small_piece_to_the_csv_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lead_file, "MIN_SPLIT_BYTES", 256)
    lines_read_by_csv: list[int] = []
    bounded_lines = lead_file._bounded_lines

    def spied(block: lead_file._Block) -> Iterator[list[str]]:
        lines_read_by_csv.append(block.lines)
        return bounded_lines(block)

    monkeypatch.setattr(lead_file, "_bounded_lines", spied)
    # 500 rows in one block, a note spanning two lines and a blank line at the end.
    rows = _regular(0, 100) + ['note@acme.example,Note,"two\nlines"'] + _regular(100, 400)
    data = ("email,first_name,company\n" + "\n".join(rows) + "\n\n").encode()

    frame, _ = _read(data, chunk_rows=10_000)

    assert len(frame) == 501 and frame.index[-1] == 503
    assert frame.at[102, "company"] == "two\nlines" and frame["email"][104] == "lead100@acme.example"
    assert 0 < sum(lines_read_by_csv) < 40  # of 503


def test_a_file_with_odd_lines_everywhere_is_read_the_same(small_blocks: list[bool],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A note spanning lines every third row: pyarrow gives up on such blocks and skips the next ones untried.
    monkeypatch.setattr(lead_file, "MAX_ODD_LINES_TO_SPLIT", 2)
    rows = [row for n in range(60) for row in (*_regular(2 * n, 2), f'note{n}@acme.example,Note,"a\nb"')]
    data = ("email,first_name,company\n" + "\n".join(rows) + "\n" + "\n".join(_regular(200, 100))).encode()
    frame, _ = _read(data)
    assert not all(small_blocks)

    _csv_module_only(monkeypatch)

    pd.testing.assert_frame_equal(frame, _read(data)[0])
    assert frame["email"][4] == "note0@acme.example" and frame["email"][6] == "lead2@acme.example"


@pytest.mark.parametrize(("data", "utf8"), [
    ("é€😀".encode() * 200, True),  # characters of 2, 3 and 4 bytes cut by every possible block end
    (("a" * 299 + "é").encode(), True),  # a whole character as the very last bytes of a block
    (("é" * 300).encode()[:-1], False),  # the file ends inside a character
    (("é" * 150).encode() + b"\xe9" + b"a" * 300, False),  # a Windows-1252 é between blocks of UTF-8
    (b"a" * 299 + b"\xed\xa0\x80", False),  # a surrogate, which UTF-8 may not hold
])
def test_the_encoding_check_reads_characters_across_block_ends(monkeypatch: pytest.MonkeyPatch, data: bytes,
                                                                utf8: bool) -> None:
    for block in (1, 2, 3, BLOCK_BYTES):
        monkeypatch.setattr(lead_file, "SCAN_BLOCK_BYTES", block)
        stream = io.BytesIO(data)
        assert lead_file._is_utf8(stream) is utf8
        assert stream.tell() == 0  # the reader starts from the top
