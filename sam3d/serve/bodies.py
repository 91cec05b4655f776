"""Request bodies shared by the page's routes and nnInteractive's."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from sam3d.errors import Sam3dError


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body); a clear error for anything else."""
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise Sam3dError("the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise Sam3dError("the request must be a JSON object")
    return body
