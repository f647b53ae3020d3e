"""reply matching: index the Message-ID header of sent emails (In-Reply-To/References lookups)

Revision ID: 0004_reply_matching
Revises: 0003_delivery
Create Date: 2026-11-24 14:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0004_reply_matching'
down_revision: str | None = '0003_delivery'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_email_jobs_message_id_header', 'email_jobs', ['message_id_header'])


def downgrade() -> None:
    op.drop_index('ix_email_jobs_message_id_header', table_name='email_jobs')
