"""The shape of a lead row: header spellings we understand and the pandera schema rows must pass."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
from pandera.dtypes import DataType, immutable
from pandera.engines import pandas_engine

from outreach_pipeline.core.lead_fields import EMAIL_PATTERN, STANDARD_FIELDS

# Header spellings seen in real exports (Apollo, HubSpot, Sales Navigator, Excel), compared
# after lower-casing and dropping everything but letters and digits.
HEADER_ALIASES: dict[str, str] = {
    "email": "email",
    "emailaddress": "email",
    "workemail": "email",
    "businessemail": "email",
    "firstname": "first_name",
    "givenname": "first_name",
    "lastname": "last_name",
    "surname": "last_name",
    "familyname": "last_name",
    "company": "company",
    "companyname": "company",
    "organization": "company",
    "organisation": "company",
    "account": "company",
    "title": "title",
    "jobtitle": "title",
    "position": "title",
    "timezone": "timezone",
    "tz": "timezone",
}

MAX_LENGTHS: dict[str, int] = {
    "email": 320,
    "first_name": 200,
    "last_name": 200,
    "company": 300,
    "title": 300,
    "timezone": 64,
}

INVALID_EMAIL = "invalid email"
# A custom cell (a note, an address) longer than this is a mistake in the file, not something to mail.
MAX_CUSTOM_LENGTH = 10_000
CUSTOM_TOO_LONG = f"too long: a custom field over {MAX_CUSTOM_LENGTH:,} characters"
CONTROL_CHARACTERS = "control characters"
# Standard fields land in greetings and subject lines: no control character at all, not even a line break
# (C1 controls such as U+0085 NEXT LINE and the Unicode line and paragraph separators included).
# The separators are written as themselves: Arrow's regex engine (RE2) has no \u escape.
_NO_CONTROL_AT_ALL = "^[^\\x00-\\x1f\\x7f-\\x9f\u2028\u2029]*$"
# Custom fields may hold line breaks and tabs (an address, a note), never other control characters.
_CONTROL_IN_CUSTOM = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def canonical_header(header: str) -> str:
    """Our field name for a CSV header, or a tidy custom-field name for anything else."""
    squashed = _NON_ALNUM.sub("", str(header).lower())
    if squashed in HEADER_ALIASES:
        return HEADER_ALIASES[squashed]
    return custom_field_name(header)


def custom_field_name(header: str) -> str:
    """The header as a custom-field name, never one of our fields: "Work Email" -> "work_email"."""
    return _NON_ALNUM.sub("_", str(header).lower()).strip("_") or "column"


def _forbidden_bytes(is_forbidden: Callable[[str], bool]) -> np.ndarray:
    """A 256-entry mask of the UTF-8 bytes whose presence means a cell may break a rule. A byte below 0x80
    is always its ASCII character; a character beyond ASCII that the rule forbids marks its first byte,
    so text holding any character starting with that byte goes to the regex (C1 controls start with 0xC2,
    which also starts a no-break space; U+2028 starts with 0xE2, as do dashes and the euro sign)."""
    mask = np.zeros(256, dtype=bool)
    mask[:128] = [is_forbidden(chr(code)) for code in range(128)]
    for code in (*range(0x80, 0xA0), 0x2028, 0x2029):
        if is_forbidden(chr(code)):
            mask[chr(code).encode()[0]] = True
    return mask


_LARGE_TEXT = pyarrow.large_string()  # what pandas' Arrow strings hold: 64-bit offsets, then UTF-8 bytes
_CONTROL_BYTES = _forbidden_bytes(lambda char: re.fullmatch(_NO_CONTROL_AT_ALL, char) is None)
_CUSTOM_CONTROL_BYTES = _forbidden_bytes(lambda char: re.search(_CONTROL_IN_CUSTOM, char) is not None)


def _arrow_text(column: pd.Series) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The column's Arrow text as (offsets, bytes) per chunk, each chunk's offsets sliced to its own cells
    (a sliced array may share a longer buffer); None when the column is not held that way."""
    if not (isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow"):
        return None
    chunks = []
    for chunk in column.array.__arrow_array__().chunks:
        if chunk.type != _LARGE_TEXT:
            return None
        if len(chunk):
            chunks.append(large_text_buffers(chunk))
    return chunks


def large_text_buffers(array: pyarrow.Array) -> tuple[np.ndarray, np.ndarray]:
    """A large-string (or large-binary) array's offsets, sliced to its own cells (a sliced array shares a
    longer buffer), and the bytes they point into; without a copy."""
    _, offsets, data = array.buffers()
    if offsets is None or data is None:
        return np.zeros(len(array) + 1, dtype=np.int64), np.empty(0, dtype=np.uint8)
    ends = np.frombuffer(offsets, dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    return ends, np.frombuffer(data, dtype=np.uint8)


def _clear_of(column: pd.Series, forbidden: np.ndarray) -> bool:
    """True when no byte of the column's Arrow text is forbidden: then no cell can fail the rule, and the
    regex (which costs far more per cell than this scan per byte) need not run. False when unsure."""
    chunks = _arrow_text(column)
    return chunks is not None and not any(_holds_any(data[ends[0]:ends[-1]], forbidden) for ends, data in chunks)


def _holds_any(text: np.ndarray, forbidden: np.ndarray) -> bool:
    """Whether some byte of `text` is forbidden. Text seldom has a byte below a space, or one of the few
    forbidden bytes above it: that is found with a minimum and a comparison per such byte (vectorised), where
    the look-up in the mask writes a flag per byte; the look-up answers only the text that fails it."""
    if not len(text):
        return False
    above_space = np.flatnonzero(forbidden[0x20:]) + 0x20
    if text.min() >= 0x20 and not any((text == byte).any() for byte in above_space):
        return False
    return bool(forbidden[text].any())


def _no_control_characters(column: pd.Series) -> pd.Series | bool:
    """`Check.str_matches(_NO_CONTROL_AT_ALL)`, for the common column with no control character at all in one scan."""
    if _clear_of(column, _CONTROL_BYTES):
        return True
    return column.str.match(_NO_CONTROL_AT_ALL, na=False)


def _at_most(limit: int, error: str) -> pa.Check:
    """`Check.str_length(max_value=limit)`, answered from the Arrow offsets alone when no cell has more bytes."""

    def within(column: pd.Series) -> pd.Series | bool:
        if _cells_within(column, limit):
            return True
        return column.str.len() <= limit

    return pa.Check(within, name="str_length", error=error, statistics={"max_value": limit})


def _optional_text(field: str) -> pa.Column:
    return pa.Column(
        str,
        [
            _at_most(MAX_LENGTHS[field], f"too long: {field}"),
            pa.Check(_no_control_characters, error=f"{CONTROL_CHARACTERS}: {field}"),
        ],
        nullable=True, required=False,
    )


def _custom_fields_have_no_control_characters(frame: pd.DataFrame) -> pd.Series | bool:
    """Row-wise: True where no custom column holds a control character other than tab or a line break."""
    clean: pd.Series | bool = True  # pandera takes True as every row passing, with no per-row work
    for column in frame.columns:
        if column not in STANDARD_FIELDS and not _clear_of(frame[column], _CUSTOM_CONTROL_BYTES):
            clean = clean & ~frame[column].str.contains(_CONTROL_IN_CUSTOM, regex=True).fillna(False).astype(bool)
    return clean


def _cells_within(column: pd.Series, limit: int) -> bool:
    """True when no cell of the column's Arrow text has more than `limit` bytes, read off the offsets: a cell
    has at least as many bytes as characters, so then none is too long. False when unsure."""
    chunks = _arrow_text(column)
    return chunks is not None and not any(np.diff(ends).max() > limit for ends, _ in chunks)


def _custom_fields_fit(frame: pd.DataFrame) -> pd.Series | bool:
    """Row-wise: True where no custom cell is longer than MAX_CUSTOM_LENGTH."""
    fits: pd.Series | bool = True  # as above
    for column in frame.columns:
        if column not in STANDARD_FIELDS and not _cells_within(frame[column], MAX_CUSTOM_LENGTH):
            too_long = (frame[column].str.len() > MAX_CUSTOM_LENGTH).fillna(False).astype(bool)
            if too_long.any():
                fits = fits & ~too_long
    return fits


LEAD_ROW_SCHEMA = pa.DataFrameSchema(
    {
        "email": pa.Column(
            str,
            [
                _at_most(MAX_LENGTHS["email"], "too long: email"),
                pa.Check.str_matches(EMAIL_PATTERN, error=INVALID_EMAIL),
            ],
            nullable=False,
        ),
        **{field: _optional_text(field) for field in STANDARD_FIELDS if field != "email"},
    },
    checks=[pa.Check(_custom_fields_have_no_control_characters, error=CONTROL_CHARACTERS),
            pa.Check(_custom_fields_fit, error=CUSTOM_TOO_LONG)],
    name="LeadRow",
    description="A lead as stored: a syntactically valid email, optional names, company, title and timezone.",
    strict=False,
)


@immutable(init=True)
class _ArrowText(pandas_engine.STRING):
    """pandas' Arrow-backed strings, checked once per column. pandera's own string type answers its dtype
    check with a mask of every cell, after which it formats a report of the (no) failures for every column
    of every chunk: a twentieth of an import's row checks. Any other dtype is checked as pandera does."""

    def check(self, pandera_dtype: DataType, data_container: Any = None) -> Any:
        if super().check(pandera_dtype) is True and pandas_engine.Engine.dtype(pandera_dtype).type == self.type:
            return True
        return super().check(pandera_dtype, data_container)


# The same schema as our frames are validated with: their columns hold Arrow-backed strings, and declaring that
# dtype makes pandera's dtype check one comparison per column instead of isinstance(cell, str) on every cell.
# LEAD_ROW_SCHEMA itself keeps `str`, the type people see in the Dagster UI.
ARROW_TEXT = _ArrowText("pyarrow")
LEAD_ROW_FRAME_SCHEMA = LEAD_ROW_SCHEMA.update_columns(
    {name: {"dtype": ARROW_TEXT} for name in LEAD_ROW_SCHEMA.columns}
)


class SchemaCheckError(RuntimeError):
    """The schema failed as a whole (a check raised): a defect to fix, never a verdict on the rows."""


def failure_reasons(failure_cases: pd.DataFrame) -> dict[int, str]:
    """First failure reason per row index, from pandera's lazy-validation report."""
    reasons: dict[int, str] = {}
    for row in failure_cases.itertuples(index=False):
        if row.index is None or pd.isna(row.index):
            # Not a row's fault: a check that raised, or a column of the wrong type. pandera reports these
            # without a row, so skipping them would let every row through unchecked.
            raise SchemaCheckError(f"the lead schema could not check the rows: {row.check} on "
                                   f"{row.column}: {row.failure_case}")
        check = str(row.check)
        reason = "missing email" if check == "not_nullable" else check
        reasons.setdefault(int(row.index), reason)
    return reasons
