"""drop ix_leads_campaign_id: the unique (campaign_id, email_key) index already serves it, and every
extra index slows bulk lead inserts

Revision ID: 0005_drop_redundant_lead_index
Revises: 0004_reply_matching
Create Date: 2026-11-24 15:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0005_drop_redundant_lead_index'
down_revision: str | None = '0004_reply_matching'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index('ix_leads_campaign_id', table_name='leads')


def downgrade() -> None:
    op.create_index('ix_leads_campaign_id', 'leads', ['campaign_id'])
