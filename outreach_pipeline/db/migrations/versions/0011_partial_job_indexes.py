"""email_jobs indexes become partial, each holding only the jobs its queries look for: a status change
writes the new row version into every index whose condition it meets, so a claim now touches three
indexes and a send five, instead of all seven

Revision ID: 0011_partial_job_indexes
Revises: 0010_opener_token_counters
Create Date: 2026-11-25 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011_partial_job_indexes'
down_revision: str | None = '0010_opener_token_counters'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = {
    "ix_email_jobs_status_due_at": ["status", "due_at"],
    "ix_email_jobs_claim": ["campaign_id", "status", "step_number", "due_at"],
    "ix_email_jobs_sent_today": ["campaign_id", "status", "sent_at"],
    "ix_email_jobs_provider_message_id": ["provider_message_id"],
    "ix_email_jobs_message_id_header": ["message_id_header"],
}
NEW = {
    "ix_email_jobs_pending": (["campaign_id", "step_number", "due_at"], "status = 'PENDING'"),
    "ix_email_jobs_pending_due": (["due_at"], "status = 'PENDING'"),
    "ix_email_jobs_sending": (["campaign_id", "claimed_at"], "status = 'SENDING'"),
    "ix_email_jobs_sent": (["campaign_id", "sent_at"], "status = 'SENT'"),
    "ix_email_jobs_provider_message_id": (["provider_message_id"], "provider_message_id IS NOT NULL"),
    "ix_email_jobs_message_id_header": (["message_id_header"], "message_id_header IS NOT NULL"),
}


def upgrade() -> None:
    for name in OLD:
        op.drop_index(name, table_name="email_jobs")
    for name, (columns, condition) in NEW.items():
        op.create_index(name, "email_jobs", columns, postgresql_where=sa.text(condition),
                        sqlite_where=sa.text(condition))


def downgrade() -> None:
    for name in NEW:
        op.drop_index(name, table_name="email_jobs")
    for name, columns in OLD.items():
        op.create_index(name, "email_jobs", columns)
