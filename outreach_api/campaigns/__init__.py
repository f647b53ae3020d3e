"""Campaigns routes."""
