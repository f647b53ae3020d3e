"""Business logic as plain functions over a SQLAlchemy session; both doors call these."""
