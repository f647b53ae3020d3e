"""The answer cache: a validated model answer, keyed by model + prompt version + the exact messages sent.

Asking the same thing again (a re-run, a duplicated campaign, two leads with the same facts) costs
nothing. Only answers that passed validation are stored, so a refused answer is asked again next time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from outreach_pipeline.db.models import LlmCacheEntry
from outreach_pipeline.llm.prompts import PROMPT_VERSION, Messages

_IN_CHUNK = 500  # keeps IN (...) lists well under every backend's parameter limit


@dataclass(frozen=True)
class CacheWrite:
    key: str
    kind: str
    model: str
    answer: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int


def cache_key(kind: str, model: str, messages: Messages) -> str:
    canonical = json.dumps({"kind": kind, "model": model, "prompt_version": PROMPT_VERSION, "messages": messages},
                           sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cached_answers(session: Session, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = sorted(set(keys))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start:start + _IN_CHUNK]
        for key, answer in session.execute(select(LlmCacheEntry.key, LlmCacheEntry.answer)
                                           .where(LlmCacheEntry.key.in_(chunk))):
            found[key] = answer
    return found


def remember(session: Session, entries: Iterable[CacheWrite]) -> None:
    """Store answers; a key already stored (another run got there first) is left as it is."""
    rows = {e.key: {"key": e.key, "kind": e.kind, "model": e.model, "prompt_version": PROMPT_VERSION,
                    "answer": e.answer, "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens}
            for e in entries}
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    values = list(rows.values())
    for start in range(0, len(values), _IN_CHUNK):
        session.execute(insert(LlmCacheEntry).values(values[start:start + _IN_CHUNK])
                        .on_conflict_do_nothing(index_elements=["key"]))
