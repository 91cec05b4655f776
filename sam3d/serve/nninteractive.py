"""nnInteractive's remote protocol in ``sam3d serve``: an nnInteractive client segments with a sam3d network.

``nninteractive-client``'s ``nnInteractiveRemoteInferenceSession`` (and the GUIs built on it) claims a
lease (``POST /claim``, then the token in ``X-Lease-Token`` on every request), sends the raw image
(``POST /set_image``: a packed array, :mod:`sam3d.serve.packed_arrays`, its properties in the JSON header
``X-Meta``), declares its target buffer, then adds points and boxes (JSON) or scribbles and lassos (packed
arrays). Every answer to an interaction carries, in ``X-Meta``, whether a prediction ran and the bounding
box ``[[lower, upper), ...]`` of the voxels it changed, and in its body those voxels of the target
buffer, which the client pastes into its own. Each lease holds one :class:`sam3d.session.Sam3dInferenceSession`;
there are at most ``--max_sessions`` of them, and one unused for the page's idle timeout gives its place
(a request on it then answers 410, a claim on a full server 503). Errors answer ``{"detail": message}``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sam3d import __version__
from sam3d.data.scans.arrays import array_affine
from sam3d.errors import Sam3dError
from sam3d.serve.bodies import json_object, limited_body
from sam3d.serve.packed_arrays import pack, unpack
from sam3d.serve.viewer import grid_voxels
from sam3d.session import Sam3dInferenceSession

if TYPE_CHECKING:
    from sam3d.serve.app import SessionStore

__all__ = ["ROUTES", "Leases"]

logger = logging.getLogger("sam3d.serve")
LEASE_HEADER = "X-Lease-Token"
META_HEADER = "X-Meta"


class LeaseError(Sam3dError):
    """A request whose lease cannot be served: 410 (unknown or expired) or 503 (server full)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Lease:
    session: Sam3dInferenceSession
    last_used: float = field(default_factory=time.monotonic)


class Leases:
    """The nnInteractive clients of one server: one session each, bounded like the pages.

    Every method expects the caller to hold the store's lock (one network, one request at a time).

    Args:
        store: The server's network, preprocessing, settings and lock.
    """

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.leases: dict[str, _Lease] = {}

    @property
    def timeout(self) -> float:
        """Seconds a lease may stay unused before it gives its place."""
        return self.store.settings.session_timeout_s

    def new_session(self) -> Sam3dInferenceSession:
        """A session on the server's network with its protocol, threshold, precision and click mode."""
        store, view = self.store, self.store.settings.view
        return Sam3dInferenceSession(
            store.net,
            store.preprocessing,
            view.protocol,
            view.threshold,
            view.cache_size,
            store.forward_context,
            view.click_mode,
        )

    def claim(self) -> str:
        """A new lease's token; leases unused for :attr:`timeout` are dropped first.

        Raises:
            LeaseError: 503 if ``max_sessions`` leases are in use.
        """
        now = time.monotonic()
        for token in [t for t, lease in self.leases.items() if now - lease.last_used >= self.timeout]:
            logger.info("nnInteractive client %s was idle: its session is closed", token[:8])
            del self.leases[token]
        limit = self.store.settings.max_sessions
        if len(self.leases) >= limit:
            raise LeaseError(
                f"this server already serves {limit} nnInteractive client(s), its limit (--max_sessions "
                f"{limit}); close one, wait until one has been idle for {self.timeout / 60:.0f} min, or restart "
                "with a larger --max_sessions",
                503,
            )
        token = secrets.token_urlsafe(24)
        self.leases[token] = _Lease(self.new_session())
        return token

    def get(self, token: str | None, touch: bool = True) -> _Lease:
        """The lease of ``token`` (``touch``: it is used now).

        Raises:
            LeaseError: 410 if there is no such lease or it expired (it is dropped then).
        """
        lease = self.leases.get(token or "")
        if lease is None or time.monotonic() - lease.last_used >= self.timeout:
            self.leases.pop(token or "", None)
            raise LeaseError(
                "no session for this client: it expired after "
                f"{self.timeout / 60:.0f} min unused, or the server restarted; connect again",
                410,
            )
        if touch:
            lease.last_used = time.monotonic()
        return lease

    def remaining(self, lease: _Lease) -> float:
        """Seconds before ``lease`` expires if unused."""
        return max(0.0, self.timeout - (time.monotonic() - lease.last_used))


def _leases(request: Request) -> Leases:
    store: SessionStore = request.app.state.sessions
    if not hasattr(request.app.state, "nninteractive"):
        request.app.state.nninteractive = Leases(store)
    leases: Leases = request.app.state.nninteractive
    return leases


def _answer_errors(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler, answering a :class:`Sam3dError` as ``{"detail": message}`` (400, or the lease's status)."""

    async def answered(request: Request) -> Response:
        try:
            return await handler(request)
        except Sam3dError as error:
            status = error.status if isinstance(error, LeaseError) else 400
            logger.info("nnInteractive: refused %s: %s", request.url.path, error)
            return JSONResponse({"detail": str(error), "error": str(error)}, status_code=status)

    return answered


async def _locked(request: Request, action: Callable[[Leases], Response]) -> Response:
    """Run ``action`` on the request's leases under the store's lock, in the thread pool."""
    leases = _leases(request)

    def run() -> Response:
        with leases.store.lock:
            return action(leases)

    return await run_in_threadpool(run)


def _token(request: Request) -> str | None:
    return request.headers.get(LEASE_HEADER)


def _meta(request: Request) -> dict[str, Any]:
    try:
        meta = json.loads(request.headers.get(META_HEADER) or "{}")
    except json.JSONDecodeError:
        raise Sam3dError(f"the {META_HEADER} header is not valid JSON") from None
    if not isinstance(meta, dict):
        raise Sam3dError(f"the {META_HEADER} header must be a JSON object")
    return meta


async def _array(request: Request, leases: Leases) -> np.ndarray:
    """The packed array of the body, within the server's size limits."""
    content = await limited_body(request, leases.store.max_upload, "the array", " for --max_voxels")
    return unpack(content, leases.store.settings.view.max_voxels)


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise Sam3dError(f"{name} must be true or false, got {value!r}")
    return value


def _changes(session: Sam3dInferenceSession, action: Callable[[], bool]) -> Response:
    """Run ``action`` (whether a prediction ran); answer the voxels of the target buffer it changed."""
    before = None if session.target_buffer is None else np.array(session.target_buffer, copy=True)
    ran = action()
    after = session.target_buffer
    meta: dict[str, Any] = {"ran_prediction": ran, "bbox": None}
    body = b""
    if ran and after is not None:
        after = np.asarray(after)
        changed = after != (np.zeros_like(after) if before is None else before)
        if changed.any():
            bounds = []
            for axis in range(changed.ndim):
                others = tuple(a for a in range(changed.ndim) if a != axis)
                where = np.flatnonzero(changed.any(axis=others))
                bounds.append([int(where[0]), int(where[-1]) + 1])
            meta["bbox"] = bounds
            body = pack(after[tuple(slice(lower, upper) for lower, upper in bounds)])
    return Response(body, media_type="application/octet-stream", headers={META_HEADER: json.dumps(meta)})


def _logged(
    leases: Leases, token: str | None, what: str, action: Callable[[Sam3dInferenceSession], bool]
) -> Response:
    session = leases.get(token).session
    start = time.perf_counter()
    response = _changes(session, lambda: action(session))
    logger.info("nnInteractive client %s: %s: %.3f s", (token or "")[:8], what, time.perf_counter() - start)
    return response


# Handlers ----------------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the server answers."""
    return JSONResponse({"status": "ok"})


async def claim(request: Request) -> Response:
    """``POST /claim``: a lease for a new client."""

    def action(leases: Leases) -> Response:
        token = leases.claim()
        logger.info("nnInteractive client %s connected", token[:8])
        return JSONResponse(
            # No liveness timeout: clients are dropped only when unused (so they send no heartbeats).
            {"lease_token": token, "idle_timeout_seconds": leases.timeout, "liveness_timeout_seconds": 0.0}
        )

    return await _locked(request, action)


async def capabilities(request: Request) -> Response:
    """``GET /capabilities``: the interactions the network takes and what else the session offers."""
    session = _leases(request).new_session()
    return JSONResponse(
        {
            "supported_interactions": session.supported_interactions,
            "channel_mapping": {},
            "num_interaction_channels": 0,
            "supports_initial_label": False,
            "supports_zero_shot_label_refinement": False,
            "preferred_scribble_thickness": [1, 1, 1],
            "interaction_decay": 1.0,
            "inference_session_version": f"sam3d-{__version__}",
            "license": "!!MISSING!!",  # the protocol's word for a license the server cannot tell
            "supports_undo": True,
            "do_autozoom": False,
        }
    )


async def release(request: Request) -> Response:
    """``POST /release``: the client is done; its session is closed."""

    def action(leases: Leases) -> Response:
        released = leases.leases.pop(_token(request) or "", None) is not None
        return JSONResponse({"released": released})

    return await _locked(request, action)


async def heartbeat(request: Request) -> Response:
    """``POST /heartbeat``: the client lives (the idle time is not reset); the seconds left."""
    return await _locked(
        request,
        lambda leases: JSONResponse(
            {"remaining_seconds": leases.remaining(leases.get(_token(request), False))}
        ),
    )


async def lease_status(request: Request) -> Response:
    """``GET /lease_status``: the seconds left before the session expires, and the idle timeout."""

    def action(leases: Leases) -> Response:
        lease = leases.get(_token(request), touch=False)
        return JSONResponse(
            {"remaining_seconds": leases.remaining(lease), "idle_timeout_seconds": leases.timeout}
        )

    return await _locked(request, action)


async def set_image(request: Request) -> Response:
    """``POST /set_image``: the raw image ``(1, x, y, z)``, its ``image_properties`` in ``X-Meta``."""
    leases = _leases(request)
    properties = _meta(request).get("image_properties") or {}
    if not isinstance(properties, dict):
        raise Sam3dError('image_properties must be a JSON object, e.g. {"spacing": [sx, sy, sz]}')
    image = await _array(request, leases)

    def action(leases: Leases) -> Response:
        session = leases.get(_token(request)).session
        if image.ndim == 4:
            affine = array_affine(properties.get("spacing"), properties.get("affine"))
            max_voxels = leases.store.settings.view.max_voxels
            if grid_voxels(image.shape[1:], affine, leases.store.preprocessing.spacing) > max_voxels:
                raise Sam3dError(
                    f"the image {image.shape[1:]} is over this server's limit of {max_voxels:,} voxels at the "
                    "network's spacing (--max_voxels); crop it to the region of interest"
                )
        start = time.perf_counter()
        session.set_image(image, properties)
        logger.info(
            "nnInteractive client %s: image %s set in %.1f s",
            (_token(request) or "")[:8],
            "x".join(map(str, image.shape[1:])),
            time.perf_counter() - start,
        )
        return JSONResponse({"original_image_shape": list(image.shape)})

    return await _locked(request, action)


async def set_target_buffer(request: Request) -> Response:
    """``POST /set_target_buffer {"shape": [x, y, z], "dtype": "uint8"}``: the client's buffer, mirrored here."""
    body = await json_object(request)

    def action(leases: Leases) -> Response:
        session = leases.get(_token(request)).session
        try:
            dtype = np.dtype(str(body.get("dtype", "uint8")))
            shape = tuple(int(n) for n in body.get("shape", ()))
        except (TypeError, ValueError):
            raise Sam3dError(f"the target buffer needs a shape and a numpy dtype, got {body!r}") from None
        if dtype.kind not in "biuf":
            raise Sam3dError(f"the target buffer's dtype must be a number type, got {dtype}")
        expected = session.original_image_shape
        if expected is None or shape != expected[1:]:
            raise Sam3dError(
                f"the target buffer has shape {shape}; set the image first, then a buffer of its shape"
            )
        session.set_target_buffer(np.zeros(shape, dtype=dtype))
        return JSONResponse({"shape": list(shape), "dtype": dtype.name})

    return await _locked(request, action)


async def set_do_autozoom(request: Request) -> Response:
    """``POST /set_do_autozoom``: accepted; sam3d's crops follow ``--crops`` instead."""
    await json_object(request)

    def action(leases: Leases) -> Response:
        leases.get(_token(request))  # a known client
        return JSONResponse({"do_autozoom": False})

    return await _locked(request, action)


async def reset_interactions(request: Request) -> Response:
    """``POST /reset_interactions``: remove every interaction and clear the buffer."""

    def action(leases: Leases) -> Response:
        leases.get(_token(request)).session.reset_interactions()
        return JSONResponse({"reset": True})

    return await _locked(request, action)


async def undo(request: Request) -> Response:
    """``POST /undo``: take back the last interaction; the voxels that changed."""
    return await _locked(request, lambda leases: _logged(leases, _token(request), "undo", lambda s: s.undo()))


async def predict(request: Request) -> Response:
    """``POST /predict``: run the interactions queued with ``run_prediction: false``; the voxels that changed."""
    await json_object(request)
    return await _locked(
        request, lambda leases: _logged(leases, _token(request), "predict", lambda s: s.predict())
    )


async def add_point(request: Request) -> Response:
    """``POST /add_point_interaction {"coordinates": [x, y, z], "include_interaction": bool, "run_prediction": bool}``."""
    body = await json_object(request)
    include, run = _flag(body, "include_interaction", True), _flag(body, "run_prediction", True)

    def add(session: Sam3dInferenceSession) -> bool:
        session.add_point_interaction(body.get("coordinates"), include, run)  # type: ignore[arg-type]
        return run

    kind = "positive" if include else "negative"
    return await _locked(
        request,
        lambda leases: _logged(leases, _token(request), f"{kind} point {body.get('coordinates')}", add),
    )


async def add_bbox(request: Request) -> Response:
    """``POST /add_bbox_interaction {"bbox_coords": [[x0, x1], [y0, y1], [z0, z1]], ...}`` (upper bounds exclusive)."""
    body = await json_object(request)
    include, run = _flag(body, "include_interaction", True), _flag(body, "run_prediction", True)

    def add(session: Sam3dInferenceSession) -> bool:
        session.add_bbox_interaction(body.get("bbox_coords"), include, run)  # type: ignore[arg-type]
        return run

    return await _locked(
        request, lambda leases: _logged(leases, _token(request), f"box {body.get('bbox_coords')}", add)
    )


def _drawn_image(mask: np.ndarray, meta: dict[str, Any], session: Sam3dInferenceSession) -> np.ndarray:
    """The scribble or lasso on the whole image (``interaction_bbox``: the array covers that region only)."""
    region = meta.get("interaction_bbox")
    shape = session.original_image_shape
    if region is None or shape is None:
        return mask
    full = np.zeros(shape[1:], dtype=mask.dtype)
    try:
        slices = tuple(slice(int(lower), int(upper)) for lower, upper in region)
        full[slices] = mask
    except (TypeError, ValueError) as error:
        raise Sam3dError(
            f"interaction_bbox {region!r} does not place an array of shape {mask.shape} in the image {shape[1:]} "
            f"({error})"
        ) from None
    return full


def _drawn_route(kind: str) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        leases = _leases(request)
        meta = _meta(request)
        include, run = _flag(meta, "include_interaction", True), _flag(meta, "run_prediction", True)
        mask = await _array(request, leases)

        def add(session: Sam3dInferenceSession) -> bool:
            drawn = _drawn_image(mask, meta, session)
            method = session.add_scribble_interaction if kind == "scribble" else session.add_lasso_interaction
            method(drawn, include, run)
            return run

        what = f"{'positive' if include else 'negative'} {kind} of {int(np.count_nonzero(mask))} voxel(s)"
        return await _locked(request, lambda leases: _logged(leases, _token(request), what, add))

    handler.__doc__ = f"``POST /add_{kind}_interaction``: a packed {kind} mask, its flags in ``X-Meta``."
    return handler


async def add_initial_seg(request: Request) -> Response:
    """``POST /add_initial_seg_interaction``: refused (sam3d's networks start from prompts)."""
    raise Sam3dError(
        "sam3d's networks take no initial segmentation: start from a point, box or scribble instead"
    )


_ROUTES: dict[str, tuple[Callable[[Request], Awaitable[Response]], str]] = {
    "/healthz": (healthz, "GET"),
    "/capabilities": (capabilities, "GET"),
    "/claim": (claim, "POST"),
    "/release": (release, "POST"),
    "/heartbeat": (heartbeat, "POST"),
    "/lease_status": (lease_status, "GET"),
    "/set_image": (set_image, "POST"),
    "/set_target_buffer": (set_target_buffer, "POST"),
    "/set_do_autozoom": (set_do_autozoom, "POST"),
    "/reset_interactions": (reset_interactions, "POST"),
    "/undo": (undo, "POST"),
    "/predict": (predict, "POST"),
    "/add_point_interaction": (add_point, "POST"),
    "/add_bbox_interaction": (add_bbox, "POST"),
    "/add_scribble_interaction": (_drawn_route("scribble"), "POST"),
    "/add_lasso_interaction": (_drawn_route("lasso"), "POST"),
    "/add_initial_seg_interaction": (add_initial_seg, "POST"),
}

ROUTES = [
    Route(path, _answer_errors(handler), methods=[method]) for path, (handler, method) in _ROUTES.items()
]
"""The protocol's routes, at the server's root beside the page's."""
