"""lead custom fields kept as text on PostgreSQL

An import's COPY sends each lead's custom fields as a JSON object; the json type checked every one as it came
in, about a fifteenth of the database's work for an import of a million leads (json_lex in a profile of the
backend). The text is ours (core/lead_store.py builds it, `JsonText` serialises it otherwise) and is read
whole; the launch check that looks inside it casts it to json. SQLite keeps its JSON column.

Upgrading rewrites `leads` once: on a large database, run it between imports.

Revision ID: 0014_lead_custom_fields_as_text
Revises: 0013_leads_cheaper_to_import
Create Date: 2026-11-25 08:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0014_lead_custom_fields_as_text'
down_revision: str | None = '0013_leads_cheaper_to_import'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("ALTER TABLE leads ALTER COLUMN custom_fields TYPE text USING custom_fields::text")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("ALTER TABLE leads ALTER COLUMN custom_fields TYPE json USING custom_fields::json")
