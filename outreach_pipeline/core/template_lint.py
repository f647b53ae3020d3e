"""Warnings about a template's wording: spam-trigger words, shouting, length. They never refuse a template;
they are stored with it and shown to the person, who decides."""

from __future__ import annotations

import re

from outreach_pipeline.core.placeholders import PLACEHOLDER

SPAM_WORDS = (
    "100% free", "act now", "apply now", "best price", "buy now", "cash", "click here", "double your",
    "earn money", "free", "guarantee", "guaranteed", "limited time", "no obligation", "risk-free",
    "special promotion", "urgent", "winner", "$$$",
)
# Capitalised words that are ordinary in B2B mail.
ACRONYMS = frozenset({"API", "B2B", "B2C", "CEO", "CFO", "COO", "CRM", "CTO", "ERP", "GDPR", "HR", "KPI", "LLC",
                      "ROI", "SAAS", "SEO", "SLA", "SMB", "UK", "USA", "EU", "VP", "AI", "IT", "PS"})
SUBJECT_SOFT_LIMIT = 60  # characters most inboxes show
BODY_SOFT_LIMIT = 200  # words: cold emails that get replies are short

_SPAM = re.compile(r"(?<![\w])(" + "|".join(re.escape(w) for w in SPAM_WORDS) + r")(?![\w])", re.IGNORECASE)
_CAPS = re.compile(r"\b[A-Z][A-Z0-9]{3,}\b")


def _without_placeholders(text: str) -> str:
    return PLACEHOLDER.sub(" ", text)


def template_warnings(subject: str, body: str) -> list[str]:
    warnings: list[str] = []
    for part, text in (("subject", subject), ("body", body)):
        plain = _without_placeholders(text)
        spam = sorted({m.group(1).lower() for m in _SPAM.finditer(plain)})
        if spam:
            warnings.append(f"Spam-trigger words in the {part}: {', '.join(spam)}.")
        shouting = sorted({w for w in _CAPS.findall(plain) if w not in ACRONYMS})
        if shouting:
            warnings.append(f"Words in capitals in the {part}: {', '.join(shouting)}.")
        if plain.count("!") > 1:
            warnings.append(f"Several exclamation marks in the {part}.")
    if len(subject) > SUBJECT_SOFT_LIMIT:
        warnings.append(f"The subject is longer than {SUBJECT_SOFT_LIMIT} characters and may be cut off.")
    words = len(_without_placeholders(body).split())
    if words > BODY_SOFT_LIMIT:
        warnings.append(f"The body has {words} words; cold emails under {BODY_SOFT_LIMIT} get more replies.")
    return warnings
