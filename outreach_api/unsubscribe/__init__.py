"""Unsubscribe routes."""
