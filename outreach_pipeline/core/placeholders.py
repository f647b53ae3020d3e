"""`{{field}}` and `{{field|fallback}}` placeholders: finding, checking and rendering them."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

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


def find_placeholders(text: str) -> list[Placeholder]:
    return [Placeholder(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def uses_field(text: str, name: str, *, without_fallback: bool = False) -> bool:
    return any(p.name == name and (p.fallback is None or not without_fallback) for p in find_placeholders(text))


def unbalanced_braces(text: str) -> bool:
    """True when braces remain after removing every well-formed placeholder."""
    rest = PLACEHOLDER.sub("", text)
    return "{{" in rest or "}}" in rest


def render(text: str, values: Mapping[str, str | None], *, escape_html: bool = False, header: bool = False) -> str:
    """Fill placeholders; lead values are HTML-escaped for HTML and stripped of CR/LF for headers."""
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None or str(value).strip() == "":
            if match.group(2) is None:
                missing.append(match.group(1))
                return ""
            value = match.group(2)
        value = str(value)
        if header:
            value = _CR_LF.sub(" ", value)
        return html.escape(value) if escape_html else value

    rendered = PLACEHOLDER.sub(fill, text)
    if missing:
        raise MissingFieldError(sorted(set(missing)))
    return _CR_LF.sub(" ", rendered) if header else rendered
