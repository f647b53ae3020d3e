"""Auth routes."""
