"""template prompt version, HTML body and lint warnings; lead openers; LLM answer cache and batches

Revision ID: 0002_generation
Revises: 0001
Create Date: 2026-11-24 14:04:20.100733
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import outreach_pipeline.db.base

revision: str = '0002_generation'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('llm_cache',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('prompt_version', sa.String(length=32), nullable=False),
    sa.Column('answer', Json, nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('created_at', outreach_pipeline.db.base.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_llm_cache')),
    sa.UniqueConstraint('key', name=op.f('uq_llm_cache_key'))
    )
    op.create_table('lead_openers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lead_id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=True),
    sa.Column('prompt_version', sa.String(length=32), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('updated_at', outreach_pipeline.db.base.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_lead_openers_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['lead_id'], ['leads.id'], name=op.f('fk_lead_openers_lead_id_leads'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lead_openers')),
    sa.UniqueConstraint('lead_id', name=op.f('uq_lead_openers_lead_id'))
    )
    with op.batch_alter_table('lead_openers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lead_openers_campaign_id'), ['campaign_id'], unique=False)

    op.create_table('llm_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('provider_batch_id', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('api_style', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('requests', Json, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', outreach_pipeline.db.base.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', outreach_pipeline.db.base.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_llm_batches_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_llm_batches')),
    sa.UniqueConstraint('provider_batch_id', name=op.f('uq_llm_batches_provider_batch_id'))
    )
    with op.batch_alter_table('llm_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_llm_batches_campaign_id'), ['campaign_id'], unique=False)

    with op.batch_alter_table('templates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('html_body', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('prompt_version', sa.String(length=32), nullable=True))
        # Existing templates have no warnings yet.
        batch_op.add_column(sa.Column('warnings', Json, nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('templates', schema=None) as batch_op:
        batch_op.drop_column('warnings')
        batch_op.drop_column('prompt_version')
        batch_op.drop_column('html_body')

    with op.batch_alter_table('lead_openers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lead_openers_campaign_id'))

    with op.batch_alter_table('llm_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_llm_batches_campaign_id'))

    op.drop_table('llm_batches')
    op.drop_table('lead_openers')
    op.drop_table('llm_cache')
