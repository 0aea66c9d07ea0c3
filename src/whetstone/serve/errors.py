"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`, so the
official clients raise their usual exception classes with our message."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from whetstone.errors import InvalidInput, NotFound, StoreError, WhetstoneError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
    500: "server_error",
}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, code=self.code, param=self.param)


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
        return APIError(503, str(e), code="store_unavailable")
    return APIError(500, str(e), code="server_error")
