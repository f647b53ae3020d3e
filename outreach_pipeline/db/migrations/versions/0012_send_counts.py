"""send_counts: emails sent per campaign per quarter hour, kept as they are marked SENT, so the daily caps
stop counting the day's sent jobs before every claim; filled from the last two days' sent jobs

Revision ID: 0012_send_counts
Revises: 0011_partial_job_indexes
Create Date: 2026-11-25 01:40:00
"""

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from outreach_pipeline.db.base import UtcDateTime

revision: str = '0012_send_counts'
down_revision: str | None = '0011_partial_job_indexes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _quarter(moment: datetime) -> datetime:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def upgrade() -> None:
    table = op.create_table(
        'send_counts',
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('quarter', UtcDateTime(), nullable=False),
        sa.Column('sent', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_send_counts_campaign_id_campaigns'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', 'quarter', name=op.f('pk_send_counts')),
    )
    # A day's cap reads at most the last 24 hours (plus a timezone's offset): two days cover any of them.
    jobs = sa.table('email_jobs', sa.column('campaign_id', sa.Integer()), sa.column('status', sa.String()),
                    sa.column('sent_at', UtcDateTime()))
    since = datetime.now(UTC) - timedelta(days=2)
    sent = op.get_bind().execute(sa.select(jobs.c.campaign_id, jobs.c.sent_at)
                                 .where(jobs.c.status == 'SENT', jobs.c.sent_at >= since))
    counts = Counter((campaign_id, _quarter(sent_at)) for campaign_id, sent_at in sent)
    if counts:
        op.bulk_insert(table, [{"campaign_id": campaign_id, "quarter": quarter, "sent": n}
                               for (campaign_id, quarter), n in counts.items()])


def downgrade() -> None:
    op.drop_table('send_counts')
