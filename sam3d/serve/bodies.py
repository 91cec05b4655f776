"""Request bodies shared by the page's routes and nnInteractive's: read within a size limit, JSON strictly."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from starlette.requests import Request

from sam3d.errors import Sam3dError

# A JSON request is small (a scribble of 65536 voxels is ~2 MiB): a larger one is refused unread.
MAX_JSON_BYTES = 16 << 20


async def limited_body(request: Request, limit: int, what: str, advice: str = "") -> bytes:
    """The request's body, refused as soon as it passes ``limit`` bytes, with or without a Content-Length.

    Raises:
        Sam3dError: Naming ``what``, the limit and ``advice``, before more than ``limit`` bytes are held.
    """

    def refuse(size: str) -> NoReturn:
        raise Sam3dError(f"{what} is {size}, more than this server accepts ({limit / 2**20:.0f} MiB){advice}")

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        refuse(f"{int(declared) / 2**20:.0f} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            refuse(f"over {limit / 2**20:.0f} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> NoReturn:
    raise Sam3dError(f"the request holds {name}: every number must be finite")


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body); a clear error for anything else, NaN included."""
    content = await limited_body(request, MAX_JSON_BYTES, "the request")
    try:
        body = json.loads(content or b"{}", parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Sam3dError("the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise Sam3dError("the request must be a JSON object")
    return body
