"""Leads routes."""
