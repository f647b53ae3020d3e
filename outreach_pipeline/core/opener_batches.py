"""Per-lead openers through OpenAI's Batch API: submitted in one job per campaign, collected when finished.

Submitted leads are marked BATCHED so live runs leave them alone (launch still waits for them). Collected
answers go through the same checks and storage as live ones; a lead without a usable answer is FAILED and
asked again on the next run. A refused answer is not re-asked with feedback inside a batch: that would
take another day; the next run asks again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach_pipeline.core.openers import (
    BATCHED,
    Outcome,
    OpenerReport,
    opener_problems,
    plan_openers,
    store_outcomes,
)
from outreach_pipeline.db.base import utcnow
from outreach_pipeline.db.models import LeadOpener, LlmBatch
from outreach_pipeline.db.session import session_scope
from outreach_pipeline.llm.batch import collect_openers, submit_openers
from outreach_pipeline.llm.openai_writer import OpenAIWriter
from outreach_pipeline.llm.prompts import PROMPT_VERSION

SUBMITTED, COMPLETED, FAILED = "SUBMITTED", "COMPLETED", "FAILED"


@dataclass(frozen=True)
class PendingBatch:
    id: int
    provider_batch_id: str
    campaign_id: int


def pending_batches(session: Session) -> list[PendingBatch]:
    rows = session.execute(select(LlmBatch.id, LlmBatch.provider_batch_id, LlmBatch.campaign_id)
                           .where(LlmBatch.status == SUBMITTED).order_by(LlmBatch.id))
    return [PendingBatch(*row) for row in rows]


def submit_opener_batch(factory: sessionmaker[Session], writer: OpenAIWriter, campaign_id: int) -> tuple[OpenerReport, str | None]:
    """Hand the openers a campaign still needs to the Batch API (cache hits are stored at once)."""
    report = OpenerReport()
    work = plan_openers(factory, writer, campaign_id, report)
    if not work:
        return report, None
    batch_id = submit_openers(writer.client, writer.api_style, writer.model, [(key, brief) for brief, _ids, key in work],
                              {"campaign_id": str(campaign_id), "kind": "openers"})
    lead_ids = [lead_id for _brief, ids, _key in work for lead_id in ids]
    with session_scope(factory) as session:
        session.add(LlmBatch(campaign_id=campaign_id, provider_batch_id=batch_id, status=SUBMITTED,
                             api_style=writer.api_style, model=writer.model,
                             requests={key: list(ids) for _brief, ids, key in work}))
        rows = {row.lead_id: row for row in session.scalars(select(LeadOpener).where(LeadOpener.lead_id.in_(lead_ids)))}
        for lead_id in lead_ids:
            row = rows.get(lead_id) or LeadOpener(lead_id=lead_id, campaign_id=campaign_id, attempts=0)
            session.add(row)
            row.status, row.text, row.error = BATCHED, None, f"waiting for batch {batch_id}"
            row.source, row.model, row.prompt_version = "openai", writer.model, PROMPT_VERSION
            row.prompt_tokens = row.completion_tokens = 0
    return report, batch_id


def _outcome(key: str, ids: list[int], model: str, results_text: str | None, error: str | None,
             prompt_tokens: int, completion_tokens: int) -> Outcome:
    problems = opener_problems(results_text) if results_text is not None else []
    if results_text is None or problems:
        return Outcome(tuple(ids), key, None, error or "; ".join(problems), "openai", model, prompt_tokens,
                       completion_tokens, 1)
    return Outcome(tuple(ids), key, results_text.strip(), None, "openai", model, prompt_tokens, completion_tokens, 1)


def collect_opener_batches(factory: sessionmaker[Session], writer: OpenAIWriter) -> tuple[OpenerReport, int]:
    """Store the answers of every finished batch; returns what was stored and how many batches finished."""
    report = OpenerReport()
    finished = 0
    with session_scope(factory) as session:
        pending = [(b.id, b.provider_batch_id, b.campaign_id, b.api_style, b.model, b.requests)
                   for b in session.scalars(select(LlmBatch).where(LlmBatch.status == SUBMITTED))]
    for row_id, batch_id, campaign_id, style, model, requests in pending:
        results = collect_openers(writer.client, style, model, batch_id)
        if not results.finished:
            continue
        finished += 1
        outcomes = []
        for key, ids in requests.items():
            written = results.openers.get(key)
            error = results.errors.get(key) or f"batch {results.status}: no answer for this request"
            outcomes.append(_outcome(key, ids, model, written.text if written else None, None if written else error,
                                     written.prompt_tokens if written else 0,
                                     written.completion_tokens if written else 0))
        store_outcomes(factory, campaign_id, outcomes, False, report)
        with session_scope(factory) as session:
            batch = session.get_one(LlmBatch, row_id)
            batch.status = COMPLETED if results.status == "completed" else FAILED
            batch.error = None if results.status == "completed" else f"batch {results.status}"
            batch.finished_at = utcnow()
    return report, finished
