"""index webhook_events.lead_id (soft-bounce counts on the webhook hot path); campaign_counts, a delta
table fed by triggers on leads and email_jobs, so campaign stats read a few rows instead of every job

Revision ID: 0007_webhook_and_counters
Revises: 0006_leads_bulk_friendly
Create Date: 2026-11-24 17:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007_webhook_and_counters'
down_revision: str | None = '0006_leads_bulk_friendly'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "campaign_id, kind, step_number, template_id, status, delivered, n"
# What one row of each table adds to campaign_counts (key columns, without n), over the alias `r`.
JOB_KEY = "r.campaign_id, 'job', r.step_number, coalesce(r.template_id, 0), r.status, r.delivered_at IS NOT NULL"
LEAD_KEY = "r.campaign_id, 'lead', 0, 0, r.status, false"
TABLES = {"email_jobs": JOB_KEY, "leads": LEAD_KEY}


def _postgres(table: str, key: str) -> list[str]:
    def body(parts: list[str]) -> str:
        return (f"INSERT INTO campaign_counts ({COLUMNS}) SELECT campaign_id, kind, step_number, template_id, "
                f"status, delivered, sum(n) FROM ({' UNION ALL '.join(parts)}) "
                "d(campaign_id, kind, step_number, template_id, status, delivered, n) "
                "GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(n) <> 0;")
    plus, minus = f"SELECT {key}, 1 FROM new_rows r", f"SELECT {key}, -1 FROM old_rows r"
    # One function per operation: a function may only name the transition tables its trigger has.
    operations = {"insert": ([plus], "NEW TABLE AS new_rows"),
                  "update": ([plus, minus], "NEW TABLE AS new_rows OLD TABLE AS old_rows"),
                  "delete": ([minus], "OLD TABLE AS old_rows")}
    statements = []
    for operation, (parts, referencing) in operations.items():
        name = f"{table}_count_{operation}"
        statements.append(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                          f"BEGIN {body(parts)} RETURN NULL; END $$")
        statements.append(f"CREATE TRIGGER {name} AFTER {operation.upper()} ON {table} REFERENCING {referencing} "
                          f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()")
    return statements


def _sqlite(table: str, key: str, watched: str) -> list[str]:
    def insert(row: str, sign: int) -> str:
        return f"INSERT INTO campaign_counts ({COLUMNS}) VALUES ({key.replace('r.', row + '.')}, {sign});"
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in watched.split(", "))
    return [
        f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} BEGIN {insert('NEW', 1)} END",
        f"CREATE TRIGGER {table}_count_update AFTER UPDATE OF {watched} ON {table} WHEN {changed} "
        f"BEGIN {insert('OLD', -1)} {insert('NEW', 1)} END",
        f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} BEGIN {insert('OLD', -1)} END",
    ]


WATCHED = {"email_jobs": "campaign_id, step_number, template_id, status, delivered_at", "leads": "campaign_id, status"}


def upgrade() -> None:
    op.create_index('ix_webhook_events_lead_id', 'webhook_events', ['lead_id'])
    op.create_table(
        'campaign_counts',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('step_number', sa.Integer(), nullable=False),
        sa.Column('template_id', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('delivered', sa.Boolean(), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_counts')),
    )
    op.create_index(op.f('ix_campaign_counts_campaign_id'), 'campaign_counts', ['campaign_id'])
    postgres = op.get_bind().dialect.name == 'postgresql'
    for table, key in TABLES.items():
        # What is already there is counted once, then the triggers keep the counts.
        op.execute(f"INSERT INTO campaign_counts ({COLUMNS}) SELECT {key}, count(*) FROM {table} r "
                   "GROUP BY 1, 2, 3, 4, 5, 6")
        for statement in _postgres(table, key) if postgres else _sqlite(table, key, WATCHED[table]):
            op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for table in TABLES:
        for operation in ("insert", "update", "delete"):
            name = f"{table}_count_{operation}"
            op.execute(f"DROP TRIGGER {name} ON {table}" if postgres else f"DROP TRIGGER {name}")
            if postgres:
                op.execute(f"DROP FUNCTION {name}()")
    op.drop_index(op.f('ix_campaign_counts_campaign_id'), table_name='campaign_counts')
    op.drop_table('campaign_counts')
    op.drop_index('ix_webhook_events_lead_id', table_name='webhook_events')
