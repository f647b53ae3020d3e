"""Database: typed models, engine and session setup, alembic migrations."""

from outreach_pipeline.db.session import create_db_engine, make_session_factory, session_scope

__all__ = ["create_db_engine", "make_session_factory", "session_scope"]
