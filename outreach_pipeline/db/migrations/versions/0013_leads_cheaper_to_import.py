"""leads cheaper to import on PostgreSQL: custom fields as json, reply tokens as uuid, status and
created_at defaults, and lead counters that an import keeps itself

Measured on 1M leads COPYed into `leads` (backend CPU): parsing the custom fields into JSONB cost 2.6 s of
12.2 s, where json only checks the text; sending status and time with every row instead of defaults cost
1.0 s; the counters' statement trigger 1.5 s, most of it capturing every new row into its transition
table; the reply tokens' unique index 0.6-1.2 s as text and nothing measurable as uuid (the same 128 bits,
16 bytes compared as bytes; PostgreSQL reads the 32 digits without dashes). The insert trigger becomes a row
trigger that an import's COPY switches off (the setting `outreach.leads_counted`, local to its transaction)
while it counts its rows into campaign_counts itself;
any other insert is still counted, row by row. Nothing reads custom fields in a way only JSONB can serve
(key lookups work on json too). SQLite is left as it is: its store sends every column and its row
triggers stay.

Upgrading rewrites `leads` once (the type changes): on a large database, run it between imports.

Revision ID: 0013_leads_cheaper_to_import
Revises: 0012_send_counts
Create Date: 2026-11-25 04:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0013_leads_cheaper_to_import'
down_revision: str | None = '0012_send_counts'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "campaign_id, kind, step_number, template_id, status, delivered, n"
# The setting an import turns on around its COPY (core/lead_store.py: LEADS_COUNTED_SETTING).
SETTING = "outreach.leads_counted"


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    # One rewrite for both. Every token we made is 32 hex digits; anything else (none expected) is replaced by
    # its md5, so the upgrade cannot fail on it.
    op.execute("""ALTER TABLE leads ALTER COLUMN custom_fields TYPE json USING custom_fields::json,
        ALTER COLUMN reply_token TYPE uuid USING (CASE WHEN reply_token ~ '^[0-9a-fA-F]{32}$'
            THEN reply_token ELSE md5(reply_token) END)::uuid""")
    op.execute("ALTER TABLE leads ALTER COLUMN status SET DEFAULT 'PENDING'")
    op.execute("ALTER TABLE leads ALTER COLUMN created_at SET DEFAULT CURRENT_TIMESTAMP")
    op.execute("DROP TRIGGER leads_count_insert ON leads")
    op.execute("DROP FUNCTION leads_count_insert()")
    op.execute(f"""CREATE FUNCTION leads_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO campaign_counts ({COLUMNS}) VALUES (NEW.campaign_id, 'lead', 0, 0, NEW.status, false, 1);
        RETURN NULL; END $$""")
    # The condition is checked in C before the function is queued: an import's rows cost nothing here.
    op.execute(f"""CREATE TRIGGER leads_count_insert AFTER INSERT ON leads FOR EACH ROW
        WHEN (current_setting('{SETTING}', true) IS DISTINCT FROM 'on')
        EXECUTE FUNCTION leads_count_insert()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("DROP TRIGGER leads_count_insert ON leads")
    op.execute("DROP FUNCTION leads_count_insert()")
    op.execute(f"""CREATE FUNCTION leads_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO campaign_counts ({COLUMNS}) SELECT campaign_id, kind, step_number, template_id, status,
        delivered, sum(n) FROM (SELECT r.campaign_id, 'lead', 0, 0, r.status, false, 1 FROM new_rows r)
        d(campaign_id, kind, step_number, template_id, status, delivered, n) GROUP BY 1, 2, 3, 4, 5, 6
        HAVING sum(n) <> 0; RETURN NULL; END $$""")
    op.execute("""CREATE TRIGGER leads_count_insert AFTER INSERT ON leads REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION leads_count_insert()""")
    op.execute("ALTER TABLE leads ALTER COLUMN created_at DROP DEFAULT")
    op.execute("ALTER TABLE leads ALTER COLUMN status DROP DEFAULT")
    op.execute("""ALTER TABLE leads ALTER COLUMN custom_fields TYPE jsonb USING custom_fields::jsonb,
        ALTER COLUMN reply_token TYPE varchar(32) USING replace(reply_token::text, '-', '')""")
