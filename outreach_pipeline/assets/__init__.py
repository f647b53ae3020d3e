"""Dagster assets: each one parses its inputs, calls the core, and reports metadata."""
