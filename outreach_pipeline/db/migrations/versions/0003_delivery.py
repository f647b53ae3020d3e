"""delivery: job claim lease and open/click times, campaign send gap, postal address, pause reason; sender caps

Revision ID: 0003_delivery
Revises: 0002_generation
Create Date: 2026-11-24 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import outreach_pipeline.db.base

revision: str = '0003_delivery'
down_revision: str | None = '0002_generation'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UtcDateTime = outreach_pipeline.db.base.UtcDateTime


def upgrade() -> None:
    with op.batch_alter_table('email_jobs') as batch:
        batch.add_column(sa.Column('claimed_at', UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('opened_at', UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('clicked_at', UtcDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('campaigns') as batch:
        batch.add_column(sa.Column('send_gap_seconds', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('postal_address', sa.Text(), nullable=True))
        batch.add_column(sa.Column('paused_reason', sa.Text(), nullable=True))
        batch.add_column(sa.Column('next_send_at', UtcDateTime(timezone=True), nullable=True))
    op.create_index('ix_email_jobs_claim', 'email_jobs', ['campaign_id', 'status', 'step_number', 'due_at'])
    op.create_index('ix_email_jobs_sent_today', 'email_jobs', ['campaign_id', 'status', 'sent_at'])
    op.create_table('sender_limits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('daily_cap', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sender_limits')),
    sa.UniqueConstraint('email', name=op.f('uq_sender_limits_email'))
    )


def downgrade() -> None:
    op.drop_table('sender_limits')
    op.drop_index('ix_email_jobs_sent_today', table_name='email_jobs')
    op.drop_index('ix_email_jobs_claim', table_name='email_jobs')
    with op.batch_alter_table('campaigns') as batch:
        batch.drop_column('next_send_at')
        batch.drop_column('paused_reason')
        batch.drop_column('postal_address')
        batch.drop_column('send_gap_seconds')
    with op.batch_alter_table('email_jobs') as batch:
        batch.drop_column('clicked_at')
        batch.drop_column('opened_at')
        batch.drop_column('claimed_at')
