"""sender_pacing: the random gap between sends is kept per sender address, across its campaigns, instead
of per campaign (campaigns.next_send_at goes)

Revision ID: 0009_sender_pacing
Revises: 0008_drop_redundant_job_index
Create Date: 2026-11-24 18:50:00
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

from outreach_pipeline.db.base import UtcDateTime

revision: str = '0009_sender_pacing'
down_revision: str | None = '0008_drop_redundant_job_index'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# SQLite drops a column by rebuilding the table, which drops the table's triggers: migration 0006's is
# made again.
_SQLITE_CAMPAIGN_TRIGGER = """CREATE TRIGGER IF NOT EXISTS campaigns_delete_leads AFTER DELETE ON campaigns
    BEGIN DELETE FROM leads WHERE campaign_id = OLD.id; END"""


def _rebuild_campaigns(change: Callable[[BatchOperations], None]) -> None:
    with op.batch_alter_table('campaigns') as batch:
        change(batch)
    if op.get_bind().dialect.name == 'sqlite':
        op.execute(_SQLITE_CAMPAIGN_TRIGGER)


def upgrade() -> None:
    op.create_table(
        'sender_pacing',
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('next_send_at', UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('email', name=op.f('pk_sender_pacing')),
    )
    _rebuild_campaigns(lambda batch: batch.drop_column('next_send_at'))


def downgrade() -> None:
    _rebuild_campaigns(
        lambda batch: batch.add_column(sa.Column('next_send_at', UtcDateTime(timezone=True), nullable=True)))
    op.drop_table('sender_pacing')
