"""Shared fixtures: real databases (tests/database.py), fake providers over real HTTP (tests/fakes)."""

pytest_plugins = ["tests.database", "tests.fixtures"]
