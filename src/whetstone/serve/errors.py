"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`, so the
official clients raise their usual exception classes with our message."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

from whetstone.errors import InvalidInput, NotFound, StoreError, WhetstoneError

log = logging.getLogger("whetstone.serve")

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    500: "server_error",
    502: "server_error",
}
# What a client learns of a store outage. The store's own message names its user, host, port
# and database; that is for the operator's log, not for whoever sent the request. Answers are
# still given meanwhile: capture keeps them (memory, then the disk spool) until the store
# returns.
STORE_DOWN = (
    "the store is unavailable right now; answers are still captured and are stored when it "
    "returns; retry later"
)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

    def response(self) -> JSONResponse:
        response = error_response(self.status, self.message, code=self.code, param=self.param)
        response.headers.update(self.headers or {})
        return response


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        error_body(status, message, code=code, param=param), status, headers=headers
    )


def from_whetstone(e: WhetstoneError, *, not_found_code: str = "not_found") -> APIError:
    """The API face of an error the rest of Whetstone raises for users."""
    if isinstance(e, NotFound):
        return APIError(404, str(e), code=not_found_code)
    if isinstance(e, InvalidInput):
        return APIError(400, str(e), code="invalid_value")
    if isinstance(e, StoreError):
        # The message names the store's URL (password hidden) and the driver's first line:
        # no record contents, no SQL parameters.
        log.warning("store unavailable: %s: %s", type(e).__name__, e)
        return APIError(503, STORE_DOWN, code="store_unavailable")
    return APIError(500, str(e), code="server_error")
