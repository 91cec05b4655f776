"""The optional API key of ``sam3d serve`` (``--api_key`` or ``SAM3D_API_KEY``): every request must carry it.

Programs send ``Authorization: Bearer KEY`` (``nninteractive-client`` does with its ``api_key``). A
browser opens the page once as ``http://host:port/?api_key=KEY``: the answer sets the key as a cookie
(HttpOnly, same site only), which the page's own requests then carry.
"""

from __future__ import annotations

import hmac

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

__all__ = ["API_KEY_ENV", "ApiKeyMiddleware"]

API_KEY_ENV = "SAM3D_API_KEY"
COOKIE = "sam3d_api_key"


class ApiKeyMiddleware(BaseHTTPMiddleware):
    """Answers 401 to a request without the key (bearer header, the page's cookie, or ``?api_key=``).

    Args:
        app: The application.
        api_key: The key.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        super().__init__(app)
        self.api_key = api_key.encode()

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.api_key)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Pass a request with the key on (setting the cookie when it came in the query); refuse others."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        in_query = request.query_params.get("api_key")
        if not (
            (scheme.lower() == "bearer" and self._matches(token.strip()))
            or self._matches(request.cookies.get(COOKIE))
            or self._matches(in_query)
        ):
            message = (
                "this server needs its API key: send 'Authorization: Bearer KEY' (nninteractive-client: "
                "api_key=KEY or NN_INTERACTIVE_API_KEY), or open the page as /?api_key=KEY"
            )
            return JSONResponse(
                {"error": message, "detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        response = await call_next(request)
        if in_query is not None:
            response.set_cookie(COOKIE, in_query, httponly=True, samesite="strict")
        return response
