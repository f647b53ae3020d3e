"""Webhooks routes."""
