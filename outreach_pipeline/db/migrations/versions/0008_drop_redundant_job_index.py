"""drop ix_email_jobs_campaign_id: the claim and sent-today indexes start with campaign_id, and every index
more is rewritten on each status change of each job (claim, send, delivery)

Revision ID: 0008_drop_redundant_job_index
Revises: 0007_webhook_and_counters
Create Date: 2026-11-24 18:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0008_drop_redundant_job_index'
down_revision: str | None = '0007_webhook_and_counters'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index('ix_email_jobs_campaign_id', table_name='email_jobs')


def downgrade() -> None:
    op.create_index('ix_email_jobs_campaign_id', 'email_jobs', ['campaign_id'])
