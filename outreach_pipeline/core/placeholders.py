"""`{{field}}` and `{{field|fallback}}` placeholders: finding, checking and rendering them."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.db.models import Template

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|([^{}]*))?\}\}")
_CR_LF = re.compile(r"[\r\n]+")
# Not a lead column: filled per lead from the opening line generated for it (core/openers.py).
AI_OPENER = "ai_opener"


@dataclass(frozen=True)
class Placeholder:
    name: str
    fallback: str | None


class MissingFieldError(ValueError):
    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"no value for {', '.join(fields)} and no fallback")
        self.fields = fields


def template_text(subject: str, body: str, html_body: str | None = None) -> str:
    """Every part of a template that placeholders may sit in, as one text to look through."""
    return "\n".join(part for part in (subject, body, html_body) if part)


def campaign_template_texts(session: Session, campaign_id: int) -> list[str]:
    """Each of the campaign's templates as one text (template_text), read in one query."""
    rows = session.execute(select(Template.subject, Template.body, Template.html_body)
                           .where(Template.campaign_id == campaign_id))
    return [template_text(*row) for row in rows]


def find_placeholders(text: str) -> list[Placeholder]:
    return [Placeholder(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def uses_field(text: str, name: str, *, without_fallback: bool = False) -> bool:
    return any(p.name == name and (p.fallback is None or not without_fallback) for p in find_placeholders(text))


def unbalanced_braces(text: str) -> bool:
    """True when braces remain after removing every well-formed placeholder."""
    rest = PLACEHOLDER.sub("", text)
    return "{{" in rest or "}}" in rest


# A batch renders the same few templates hundreds of times: each is split into its pieces once.
@lru_cache(maxsize=512)
def _pieces(text: str) -> tuple[tuple[str, str | None, str | None], ...]:
    """(literal, field, fallback) runs of `text`; field is None for the trailing literal."""
    pieces: list[tuple[str, str | None, str | None]] = []
    start = 0
    for match in PLACEHOLDER.finditer(text):
        pieces.append((text[start:match.start()], match.group(1), match.group(2)))
        start = match.end()
    pieces.append((text[start:], None, None))
    return tuple(pieces)


def render(text: str, values: Mapping[str, str | None], *, escape_html: bool = False, header: bool = False) -> str:
    """Fill placeholders; lead values are HTML-escaped for HTML and stripped of CR/LF for headers.

    With `escape_html`, `text` is HTML already (the template escaped as a whole), fallbacks included: only
    lead values are escaped here, or a fallback's `&` would reach the reader as `&amp;`.
    """
    parts: list[str] = []
    missing: list[str] = []
    for literal, name, fallback in _pieces(text):
        parts.append(literal)
        if name is None:
            continue
        value = values.get(name)
        from_lead = not (value is None or str(value).strip() == "")
        if not from_lead:
            if fallback is None:
                missing.append(name)
                continue
            value = fallback
        value = str(value)
        if header:
            value = _CR_LF.sub(" ", value)
        parts.append(html.escape(value) if escape_html and from_lead else value)
    if missing:
        raise MissingFieldError(sorted(set(missing)))
    rendered = "".join(parts)
    return _CR_LF.sub(" ", rendered) if header else rendered
