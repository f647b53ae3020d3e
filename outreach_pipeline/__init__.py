"""Outreach engine: the core (db, domain logic, mail and LLM backends) and its Dagster door."""
