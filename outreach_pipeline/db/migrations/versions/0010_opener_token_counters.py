"""campaign_counts also keeps the tokens spent on a campaign's openers (kinds `oprompt` and `ocompl`), fed
by triggers on lead_openers, so campaign stats stop summing one row per lead

Revision ID: 0010_opener_token_counters
Revises: 0009_sender_pacing
Create Date: 2026-11-24 21:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0010_opener_token_counters'
down_revision: str | None = '0009_sender_pacing'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "campaign_id, kind, step_number, template_id, status, delivered, n"
# The counter kind of each token column of lead_openers.
TOKENS = (("oprompt", "prompt_tokens"), ("ocompl", "completion_tokens"))
OPERATIONS = ("insert", "update", "delete")


def _deltas(rows: str, sign: str) -> list[str]:
    return [f"SELECT campaign_id, '{kind}', {sign}{column} FROM {rows}" for kind, column in TOKENS]


def _postgres() -> list[str]:
    def body(parts: list[str]) -> str:
        return (f"INSERT INTO campaign_counts ({COLUMNS}) SELECT campaign_id, kind, 0, 0, '', false, sum(n) "
                f"FROM ({' UNION ALL '.join(parts)}) d(campaign_id, kind, n) GROUP BY 1, 2 HAVING sum(n) <> 0;")
    plus, minus = _deltas("new_rows", ""), _deltas("old_rows", "-")
    # One function per operation: a function may only name the transition tables its trigger has.
    operations = {"insert": (plus, "NEW TABLE AS new_rows"),
                  "update": (plus + minus, "NEW TABLE AS new_rows OLD TABLE AS old_rows"),
                  "delete": (minus, "OLD TABLE AS old_rows")}
    statements = []
    for operation, (parts, referencing) in operations.items():
        name = f"lead_openers_tokens_{operation}"
        statements.append(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                          f"BEGIN {body(parts)} RETURN NULL; END $$")
        statements.append(f"CREATE TRIGGER {name} AFTER {operation.upper()} ON lead_openers REFERENCING {referencing} "
                          f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()")
    return statements


def _sqlite() -> list[str]:
    def insert(row: str, sign: str) -> str:
        return " ".join(f"INSERT INTO campaign_counts ({COLUMNS}) VALUES "
                        f"({row}.campaign_id, '{kind}', 0, 0, '', 0, {sign}{row}.{column});" for kind, column in TOKENS)
    watched = "campaign_id, prompt_tokens, completion_tokens"
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in watched.split(", "))
    return [
        f"CREATE TRIGGER lead_openers_tokens_insert AFTER INSERT ON lead_openers BEGIN {insert('NEW', '')} END",
        f"CREATE TRIGGER lead_openers_tokens_update AFTER UPDATE OF {watched} ON lead_openers WHEN {changed} "
        f"BEGIN {insert('OLD', '-')} {insert('NEW', '')} END",
        f"CREATE TRIGGER lead_openers_tokens_delete AFTER DELETE ON lead_openers BEGIN {insert('OLD', '-')} END",
    ]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    if postgres:  # no opener written between the count below and the triggers: it would be missed for good
        op.execute("LOCK TABLE lead_openers IN SHARE ROW EXCLUSIVE MODE")
    # What is already there is counted once, then the triggers keep the counts.
    for kind, column in TOKENS:
        op.execute(f"INSERT INTO campaign_counts ({COLUMNS}) SELECT campaign_id, '{kind}', 0, 0, '', false, "
                   f"sum({column}) FROM lead_openers GROUP BY campaign_id HAVING sum({column}) <> 0")
    for statement in _postgres() if postgres else _sqlite():
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for operation in OPERATIONS:
        name = f"lead_openers_tokens_{operation}"
        op.execute(f"DROP TRIGGER {name} ON lead_openers" if postgres else f"DROP TRIGGER {name}")
        if postgres:
            op.execute(f"DROP FUNCTION {name}()")
    op.execute("DELETE FROM campaign_counts WHERE kind IN ('oprompt', 'ocompl')")
