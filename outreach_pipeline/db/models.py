"""The facts the product keeps, as SQLAlchemy 2.0 typed models (see DESIGN.md, 'Data model')."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from outreach_pipeline.db.base import Base, HexToken, JsonText, JsonType, as_token, json_text_field, utcnow


class CampaignStatus(StrEnum):
    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"


class LeadStatus(StrEnum):
    PENDING = "PENDING"
    CONTACTED = "CONTACTED"
    REPLIED = "REPLIED"
    BOUNCED = "BOUNCED"
    UNSUBSCRIBED = "UNSUBSCRIBED"
    FAILED = "FAILED"


class JobStatus(StrEnum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class ImportStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


def _enum(enum_cls: type[StrEnum]) -> Enum:
    # Stored as plain strings: portable across SQLite and PostgreSQL, easy to extend.
    return Enum(enum_cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


def _partial(name: str, columns: list[str], condition: str) -> Index:
    """An index holding only the rows that meet `condition` (PostgreSQL and SQLite both have them)."""
    return Index(name, *columns, postgresql_where=text(condition), sqlite_where=text(condition))


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class MagicLinkToken(Base):
    """A sign-in link: only the SHA-256 of the token is kept; single use, short-lived."""

    __tablename__ = "magic_link_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    pitch: Mapped[str] = mapped_column(Text, default="")
    tone: Mapped[str] = mapped_column(String(100), default="friendly, concise")
    sender_name: Mapped[str] = mapped_column(String(200), default="")
    sender_email: Mapped[str] = mapped_column(String(320), default="")
    status: Mapped[CampaignStatus] = mapped_column(_enum(CampaignStatus), default=CampaignStatus.DRAFT)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    window_start_hour: Mapped[int] = mapped_column(default=0)
    window_end_hour: Mapped[int] = mapped_column(default=24)
    send_days: Mapped[str] = mapped_column(String(7), default="0123456")  # Monday=0
    daily_cap: Mapped[int] = mapped_column(default=500)
    # Seconds between two sends from this campaign's sender address (whichever campaign sends), drawn at
    # random in [gap, 2*gap]; 0 sends back to back. The pacing state is per address: SenderPacing.
    send_gap_seconds: Mapped[int] = mapped_column(default=0)
    # Printed under every email when set (CAN-SPAM asks for a postal address).
    postal_address: Mapped[str | None] = mapped_column(Text)
    # Why the campaign paused itself (hard-bounce rate), shown in its stats; None when paused by a person.
    paused_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    launched_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    steps: Mapped[list[CampaignStep]] = relationship(
        back_populates="campaign", order_by="CampaignStep.number", cascade="all, delete-orphan"
    )


class CampaignStep(Base):
    """One email of the sequence; step 1 goes at launch, each later one `delay_days` after the previous."""

    __tablename__ = "campaign_steps"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    number: Mapped[int]
    delay_days: Mapped[int] = mapped_column(default=0)
    subject_hint: Mapped[str] = mapped_column(String(300), default="")
    # A threaded step goes out as a reply to step 1 ("Re: <first subject>"); otherwise as a new email.
    thread: Mapped[bool] = mapped_column(default=True)

    campaign: Mapped[Campaign] = relationship(back_populates="steps")


class LeadImport(Base):
    __tablename__ = "lead_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(1000))
    status: Mapped[ImportStatus] = mapped_column(_enum(ImportStatus), default=ImportStatus.RUNNING)
    rows_read: Mapped[int] = mapped_column(default=0)
    accepted: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    rejects_path: Mapped[str | None] = mapped_column(String(1000))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Lead(Base):
    __tablename__ = "leads"
    # email_key is the lower-cased address: one lead per address per campaign, whatever its case.
    __table_args__ = (UniqueConstraint("campaign_id", "email_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign keys and no index of their own: a million-row import would pay a locking parent lookup per
    # row. The import locks its campaign once; triggers delete a campaign's leads and unlink a deleted
    # import's (migration 0006). The unique (campaign_id, email_key) index serves lookups by campaign and
    # by address within an owner's campaigns.
    campaign_id: Mapped[int]
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(300))
    title: Mapped[str | None] = mapped_column(String(300))
    timezone: Mapped[str | None] = mapped_column(String(64))
    # Text on PostgreSQL (migration 0014): an import's COPY neither parses it into a tree (JSONB, a fifth of the
    # database's cost of a row) nor checks it (json); nothing needs the database to read inside it but one check.
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JsonText, default=dict)
    # PostgreSQL also has server defaults for these two, which an import's COPY leaves to it (migration 0013).
    status: Mapped[LeadStatus] = mapped_column(_enum(LeadStatus), default=LeadStatus.PENDING)
    reply_token: Mapped[str] = mapped_column(HexToken, unique=True)  # a uuid on PostgreSQL (migration 0013)
    import_id: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replied_at: Mapped[datetime | None]

    campaign: Mapped[Campaign] = relationship(primaryjoin="Campaign.id == foreign(Lead.campaign_id)")



def lead_custom_field(name: str, dialect: Dialect) -> ColumnElement[str]:
    """A lead's custom field `name` as text, in SQL."""
    return json_text_field(Lead.custom_fields, name, dialect)


def holds_reply_token(token: str) -> ColumnElement[bool]:
    """The lead whose reply token `token` is (in any case of its hex digits); none for text that is no token."""
    normal = as_token(token)
    return Lead.reply_token == normal if normal is not None else false()


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("campaign_id", "step_number", "variant"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int]
    variant: Mapped[str] = mapped_column(String(8), default="A")
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # manual | openai | offline
    model: Mapped[str | None] = mapped_column(String(100))
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    # Optional HTML version written by the model; the plain-text body stays the reference.
    html_body: Mapped[str | None] = mapped_column(Text)
    # The PROMPT_VERSION of outreach_pipeline/llm/prompts.py that wrote it (None when hand-written).
    prompt_version: Mapped[str | None] = mapped_column(String(32))
    # Lint warnings (spam words, shouting) found when saved: shown to people, never a refusal.
    warnings: Mapped[list[str]] = mapped_column(JsonType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LeadOpener(Base):
    """The AI-written opening line of one lead (`{{ai_opener}}`); FAILED ones are retried on the next run."""

    __tablename__ = "lead_openers"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), unique=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # READY | FAILED | BATCHED (waiting in a Batch API job)
    text: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # openai | offline
    model: Mapped[str | None] = mapped_column(String(100))
    prompt_version: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LlmBatch(Base):
    """A job handed to OpenAI's Batch API (half price, answered within 24 h); collected when finished."""

    __tablename__ = "llm_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    provider_batch_id: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # SUBMITTED | COMPLETED | FAILED
    api_style: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(100))
    # custom_id (the answer-cache key of the request) -> the lead ids it answers
    requests: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class LlmCacheEntry(Base):
    """A validated model answer, keyed by a hash of model + prompt version + inputs: asked again, it is free."""

    __tablename__ = "llm_cache"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    kind: Mapped[str] = mapped_column(String(16))  # template | opener
    model: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(32))
    answer: Mapped[dict[str, Any]]
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmailJob(Base):
    __tablename__ = "email_jobs"
    __table_args__ = (
        UniqueConstraint("lead_id", "step_number"),
        # Partial indexes, each holding only the jobs its queries look for. A status change writes a new row
        # version into every index whose condition it meets, so a claim (PENDING -> SENDING) touches three
        # indexes and a send (SENDING -> SENT) five, instead of all seven.
        # The claim (per campaign, follow-ups then first emails, oldest due first) and pacing:
        _partial("ix_email_jobs_pending", ["campaign_id", "step_number", "due_at"], "status = 'PENDING'"),
        # Due jobs across campaigns (closed windows to defer):
        _partial("ix_email_jobs_pending_due", ["due_at"], "status = 'PENDING'"),
        # In flight: the reconciler's abandoned claims and the daily cap's emails being sent.
        _partial("ix_email_jobs_sending", ["campaign_id", "claimed_at"], "status = 'SENDING'"),
        # The daily cap's emails sent today, and the sent emails per template:
        _partial("ix_email_jobs_sent", ["campaign_id", "sent_at"], "status = 'SENT'"),
        # Events name the email by the provider's id; a reply by the Message-ID it answers.
        _partial("ix_email_jobs_provider_message_id", ["provider_message_id"], "provider_message_id IS NOT NULL"),
        _partial("ix_email_jobs_message_id_header", ["message_id_header"], "message_id_header IS NOT NULL"),
        # Room on each page for a row's next versions: a webhook's stamp then stays on its page and touches no
        # index (migration 0015).
        {"postgresql_with": {"fillfactor": 80}},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No index of its own: the partial indexes above start with it, and an index on every job is written
    # on every status change of every job. Questions about all of a campaign's jobs read campaign_counts.
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    step_number: Mapped[int]
    # The template it was rendered from. No foreign key: recording a sent batch sets it on every job, and the
    # key's check of each row cost more than the rest of the recording; a trigger clears it when its
    # template is deleted (migration 0016).
    template_id: Mapped[int | None]
    due_at: Mapped[datetime]
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    message_id_header: Mapped[str | None] = mapped_column(String(300))
    subject: Mapped[str | None] = mapped_column(String(300))
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    # When a sender took the job (PENDING -> SENDING); a SENDING job older than the lease is reconciled.
    claimed_at: Mapped[datetime | None]
    opened_at: Mapped[datetime | None]
    clicked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    lead: Mapped[Lead] = relationship()


class Suppression(Base):
    """An address the owner must never mail again, whichever campaign it is in."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("owner_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))  # lower-cased
    reason: Mapped[str] = mapped_column(String(32))  # bounce | complaint | unsubscribe | manual | inactive
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SenderLimit(Base):
    """A daily cap on one sender address, across every campaign that sends from it."""

    __tablename__ = "sender_limits"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # lower-cased
    daily_cap: Mapped[int]


class SenderPacing(Base):
    """When a sender address may send next: the random gap (Campaign.send_gap_seconds) spaces the emails of
    one address across all the campaigns that send from it, as a mailbox provider sees them."""

    __tablename__ = "sender_pacing"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-cased
    next_send_at: Mapped[datetime | None]


class SendCount(Base):
    """Emails sent per campaign per quarter of an hour (UTC), kept by core/jobs.py's mark_sent as it marks
    them SENT. A daily cap reads the day's few dozen rows of these instead of counting the day's sent jobs,
    a count that grew with every email and ran before every claim. Quarter hours, because every timezone's
    midnight falls on one."""

    __tablename__ = "send_counts"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    quarter: Mapped[datetime] = mapped_column(primary_key=True)
    sent: Mapped[int] = mapped_column(default=0)


class WebhookEvent(Base):
    """Every webhook, stored once: a replay finds its row and changes nothing."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("provider", "record_type", "provider_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    record_type: Mapped[str] = mapped_column(String(32))
    provider_id: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]]
    # Indexed: a soft bounce counts the lead's earlier ones on the webhook hot path.
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("email_jobs.id", ondelete="SET NULL"))
    outcome: Mapped[str] = mapped_column(String(200), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]


class CampaignCount(Base):
    """Append-only deltas of a campaign's lead and job counts and opener tokens, so its stats never count a
    million rows.

    Written only by database triggers on `leads` and `email_jobs` (migration 0007) and `lead_openers`
    (migration 0010): statement-level with transition tables on PostgreSQL (one aggregated insert per
    statement, so concurrent senders never wait on a shared counter row), per row on SQLite. A count is
    the sum of `n` over its key; `core/campaigns.py` folds a campaign's rows into one per key when it
    reads them.
    """

    __tablename__ = "campaign_counts"

    # 64 bits on PostgreSQL: every counted statement appends rows; SQLite needs INTEGER for its rowid.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    # No foreign key: a cascading campaign delete appends deltas for the campaign going away.
    campaign_id: Mapped[int] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(8))  # lead | job | oprompt | ocompl (opener tokens, n = tokens)
    step_number: Mapped[int]  # 0 for leads
    template_id: Mapped[int]  # 0 for leads and for jobs not rendered yet
    status: Mapped[str] = mapped_column(String(16))
    delivered: Mapped[bool]  # jobs with delivered_at set
    n: Mapped[int] = mapped_column(BigInteger)


def job_status_is(status: JobStatus) -> ColumnElement[bool]:
    """`email_jobs.status = '<status>'` with the value written into the SQL, not bound. PostgreSQL uses a
    partial index (above) only when it can prove from the query that the index's condition holds, and a
    bound value proves nothing in the generic plan of a prepared statement."""
    return EmailJob.status == literal_column(f"'{status.value}'")
