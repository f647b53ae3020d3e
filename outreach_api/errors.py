"""Every error answers in one shape: RFC 9457 problem details (`application/problem+json`), never a bare 500.

`{"type", "title", "status", "detail"}` plus `extra` when there is more to say: the fields a validation
error names (`[{"key", "message", "source"}]`) or every problem a launch pre-flight found.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from sqlalchemy.exc import DataError
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_502_BAD_GATEWAY,
)

from outreach_pipeline.core.errors import (
    AuthenticationError,
    ConflictError,
    DomainError,
    InvalidInputError,
    NotFoundError,
)
from outreach_pipeline.llm.brief import WriterUnavailableError

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[DomainError], int] = {
    NotFoundError: HTTP_404_NOT_FOUND,
    ConflictError: HTTP_409_CONFLICT,
    InvalidInputError: HTTP_422_UNPROCESSABLE_ENTITY,
    AuthenticationError: HTTP_401_UNAUTHORIZED,
}


def problem(status: int, detail: str, *, extra: Any = None, headers: dict[str, str] | None = None) -> ProblemDetailsException:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    # A list travels as `extra`; a mapping would be spread over the top level, so it is wrapped too.
    wrapped = {"extra": extra} if isinstance(extra, dict) else extra
    return ProblemDetailsException(status_code=status, detail=detail, title=title, type_="about:blank",
                                   extra=wrapped or None, headers=headers)


def from_domain_error(error: DomainError) -> ProblemDetailsException:
    status = next((code for kind, code in STATUS_FOR.items() if isinstance(error, kind)), 400)
    return problem(status, error.message, extra=error.details)


def from_http_exception(error: HTTPException) -> ProblemDetailsException:
    if isinstance(error, ValidationException) and isinstance(error.extra, list):
        extra = [_body_error(item) for item in error.extra]
        about_body = bool(extra) and all(isinstance(item, dict) and item.get("key") == "body" for item in extra)
        detail = extra[0]["message"] if about_body else error.detail  # the body itself, not one of its fields
        return problem(error.status_code, detail, extra=extra, headers=error.headers)
    return problem(error.status_code, error.detail, extra=error.extra, headers=error.headers)


MISSING_BODY = "The request body is missing: send a JSON object."
NOT_AN_OBJECT = "The request body is not a JSON object (null, an array or a bare value was sent)."
PYDANTIC_NOT_A_MODEL = "Input should be a valid dictionary or instance of"  # pydantic's `model_type` error


def _body_error(item: Any) -> Any:
    """Litestar names an absent body by its KeyError ("'data'") and a body of the wrong kind (null, [])
    without a key: both are said plainly, under the key "body"."""
    if not isinstance(item, dict):
        return item
    if item.get("key") == "data" and item.get("message") == "'data'":
        return {"key": "body", "message": MISSING_BODY, "source": "body"}
    if "key" not in item and str(item.get("message", "")).startswith(PYDANTIC_NOT_A_MODEL):
        return {"key": "body", "message": NOT_AN_OBJECT, "source": "body"}
    return item


def from_too_deep(error: RecursionError) -> ProblemDetailsException:
    # msgspec gives up on a deeply nested document (100,000 '[') with a RecursionError: the body is refused.
    if "deserializ" not in str(error):
        return from_unexpected(error)
    return problem(HTTP_400_BAD_REQUEST, "The JSON body is nested too deeply to read.")


def from_undecodable(_error: UnicodeDecodeError) -> ProblemDetailsException:
    return problem(HTTP_400_BAD_REQUEST, "The request body is not valid UTF-8.")


def from_out_of_range(error: Exception) -> ProblemDetailsException:
    # A value the database cannot hold (an id past 64 bits, text with a NUL byte, a string over its column).
    log.info("value out of range for the database: %s", type(error).__name__)
    return problem(HTTP_400_BAD_REQUEST, "A value in the request is out of range or cannot be stored.")


def from_writer_unavailable(error: WriterUnavailableError) -> ProblemDetailsException:
    # The model endpoint is down or refusing: our gateway's fault, not the caller's; retrying later helps.
    log.warning("template writer unavailable: %s", error)
    return problem(HTTP_502_BAD_GATEWAY, f"The language model is unavailable, try again later: {error}")


def from_unexpected(error: Exception) -> ProblemDetailsException:
    # Logged here because the answer says nothing about the cause, on purpose.
    log.error("unhandled error", exc_info=error)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "Something went wrong on our side; it has been logged.")


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map={
        DomainError: from_domain_error,
        WriterUnavailableError: from_writer_unavailable,
        HTTPException: from_http_exception,
        UnicodeDecodeError: from_undecodable,
        RecursionError: from_too_deep,
        OverflowError: from_out_of_range,
        DataError: from_out_of_range,
        Exception: from_unexpected,
    }))
