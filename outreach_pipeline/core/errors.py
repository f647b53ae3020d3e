"""Domain errors; each door maps them to its own shape (HTTP status, Dagster failure)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base for errors a user can act on; the message is safe to show."""

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(DomainError):
    """The thing does not exist, or belongs to someone else (never reveal which)."""


class ConflictError(DomainError):
    """The request does not fit the current state (e.g. an invalid status transition)."""


class InvalidInputError(DomainError):
    """The input is understood but not acceptable (a bad field, a failed pre-flight check)."""


class AuthenticationError(DomainError):
    """A sign-in token that is unknown, used or expired."""
