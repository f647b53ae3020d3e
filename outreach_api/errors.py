"""Domain errors become HTTP answers with a clear message, never a 500."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response
from litestar.status_codes import (
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
)

from outreach_pipeline.core.errors import (
    AuthenticationError,
    ConflictError,
    DomainError,
    InvalidInputError,
    NotFoundError,
)

STATUS_FOR: dict[type[DomainError], int] = {
    NotFoundError: HTTP_404_NOT_FOUND,
    ConflictError: HTTP_409_CONFLICT,
    InvalidInputError: HTTP_422_UNPROCESSABLE_ENTITY,
    AuthenticationError: HTTP_401_UNAUTHORIZED,
}


def domain_error_handler(_request: Request[Any, Any, Any], error: DomainError) -> Response[dict[str, Any]]:
    status = next((code for kind, code in STATUS_FOR.items() if isinstance(error, kind)), 400)
    body: dict[str, Any] = {"status_code": status, "detail": error.message}
    if error.details is not None:
        body["extra"] = error.details
    return Response(body, status_code=status, media_type=MediaType.JSON)
