"""leads without foreign keys or the email_key index: bulk imports pay for every per-row check

A foreign key costs one locking lookup of the parent row per inserted lead, which on a million-row import
cost more than the insert itself; the import now locks its campaign once instead. Deleting a campaign or an
import still reaches its leads, through triggers. `ix_leads_email_key` goes too: lookups by address are
always within an owner's campaigns, which the unique (campaign_id, email_key) index serves.

Revision ID: 0006_leads_bulk_friendly
Revises: 0005_drop_redundant_lead_index
Create Date: 2026-11-24 17:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006_leads_bulk_friendly'
down_revision: str | None = '0005_drop_redundant_lead_index'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_POSTGRES_TRIGGERS = [
    """CREATE FUNCTION campaigns_delete_leads() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN DELETE FROM leads WHERE campaign_id = OLD.id; RETURN NULL; END $$""",
    """CREATE TRIGGER campaigns_delete_leads AFTER DELETE ON campaigns
       FOR EACH ROW EXECUTE FUNCTION campaigns_delete_leads()""",
    """CREATE FUNCTION lead_imports_unlink_leads() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN UPDATE leads SET import_id = NULL WHERE import_id = OLD.id; RETURN NULL; END $$""",
    """CREATE TRIGGER lead_imports_unlink_leads AFTER DELETE ON lead_imports
       FOR EACH ROW EXECUTE FUNCTION lead_imports_unlink_leads()""",
]
_SQLITE_TRIGGERS = [
    """CREATE TRIGGER campaigns_delete_leads AFTER DELETE ON campaigns
       BEGIN DELETE FROM leads WHERE campaign_id = OLD.id; END""",
    """CREATE TRIGGER lead_imports_unlink_leads AFTER DELETE ON lead_imports
       BEGIN UPDATE leads SET import_id = NULL WHERE import_id = OLD.id; END""",
]


def upgrade() -> None:
    with op.batch_alter_table('leads') as batch:  # SQLite rebuilds the table; PostgreSQL alters it in place
        batch.drop_constraint('fk_leads_campaign_id_campaigns', type_='foreignkey')
        batch.drop_constraint('fk_leads_import_id_lead_imports', type_='foreignkey')
        batch.drop_index('ix_leads_email_key')
    postgres = op.get_bind().dialect.name == 'postgresql'
    for statement in _POSTGRES_TRIGGERS if postgres else _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER lead_imports_unlink_leads ON lead_imports')
        op.execute('DROP TRIGGER campaigns_delete_leads ON campaigns')
        op.execute('DROP FUNCTION lead_imports_unlink_leads()')
        op.execute('DROP FUNCTION campaigns_delete_leads()')
    else:
        op.execute('DROP TRIGGER lead_imports_unlink_leads')
        op.execute('DROP TRIGGER campaigns_delete_leads')
    with op.batch_alter_table('leads') as batch:
        batch.create_index('ix_leads_email_key', ['email_key'])
        batch.create_foreign_key('fk_leads_campaign_id_campaigns', 'campaigns', ['campaign_id'], ['id'],
                                 ondelete='CASCADE')
        batch.create_foreign_key('fk_leads_import_id_lead_imports', 'lead_imports', ['import_id'], ['id'],
                                 ondelete='SET NULL')
