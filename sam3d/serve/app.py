"""The web application of ``sam3d serve`` (Starlette): the page, its scans, one interaction session per page.

Each page (browser tab) asks the server for a secret page token (``POST /api/page``) and sends it in the
``X-Sam3d-Page`` header of every request, never in a URL; the server keeps one
:class:`~sam3d.serve.viewer.ScanView` per page, so two browsers never mix their clicks, boxes and scribbles.
:mod:`sam3d.serve.guard` keeps other web sites out (Host, Origin, JSON only).
A scan holds several objects; every interaction goes to the selected one.
The network runs for one request at a time. Every user error answers ``400 {"error": message}``, which the page shows;
anything else is logged with its traceback and answers 500, and the server goes on serving.

What the requests share is one :class:`SessionStore` on ``app.state.sessions``: the network and its
settings, the pages with a scan open, and the lock. The routes are the module's handlers, each reading
the store from its request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sam3d import __version__
from sam3d.data.files import refuse_detached_data
from sam3d.data.preprocessing import Preprocessing
from sam3d.errors import Sam3dError
from sam3d.models import VolumetricSam
from sam3d.serve import nninteractive
from sam3d.serve.auth import ApiKeyMiddleware
from sam3d.serve.bodies import json_object, limited_body
from sam3d.serve.guard import GuardMiddleware, server_names
from sam3d.serve.viewer import BYTES_PER_VOXEL, OutputOptions, ScanView, ViewSettings, open_scan

__all__ = ["ServeSettings", "SessionStore", "create_app"]

logger = logging.getLogger("sam3d.serve")
STATIC = Path(__file__).parent / "static"
PAGE_FILES = ("index.html", "app.js", "style.css")
PAGE_HEADER = "X-Sam3d-Page"


@dataclass(frozen=True)
class ServeSettings:
    """Segmentation settings and limits of the server.

    Args:
        view: Protocol, thresholds, cache and scan size limit.
        max_sessions: Pages (browser tabs) with a scan open at once; each holds its scan in memory.
        session_timeout_s: A page unused for this long gives its place to a new one when the server is full.
    """

    view: ViewSettings = field(default_factory=ViewSettings)
    max_sessions: int = 4
    session_timeout_s: float = 1800.0


@dataclass
class _Page:
    view: ScanView
    display_name: str
    upload: Path | None = None  # the folder of an uploaded scan
    last_seen: float = field(default_factory=time.monotonic)
    left: bool = False  # the tab was closed or reloaded (a reload takes its page back)

    def close(self) -> None:
        if self.upload is not None:
            shutil.rmtree(self.upload, ignore_errors=True)


class SessionStore:
    """What every request of one application shares: the network, its settings, the pages and the lock.

    A page is a browser tab with a scan open, at most ``settings.max_sessions`` of them; a new page
    takes the place of one whose tab was closed, or of one idle for ``session_timeout_s``. The page
    methods (:meth:`find`, :meth:`page`, :meth:`make_room`, :meth:`put`, :meth:`leave`) expect the
    caller to hold :attr:`lock`; :meth:`open` takes it itself.

    Args:
        net: The network, on its device, in eval mode.
        preprocessing: The checkpoint's preprocessing.
        output: Where Save writes (the ``predict`` writer's folder), and whether the probability map too.
        scans: Scan files listed on the page.
        settings: Segmentation settings and limits.
        forward_context: Context of every network call (the trainer's precision).
        problems: Inputs that name no usable scan, shown on the page.
    """

    def __init__(
        self,
        net: VolumetricSam,
        preprocessing: Preprocessing,
        output: OutputOptions,
        scans: list[Path],
        settings: ServeSettings | None = None,
        forward_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        problems: list[str] | None = None,
    ) -> None:
        self.net, self.preprocessing, self.output = net, preprocessing, output
        self.scans, self.problems = scans, problems or []
        self.settings = settings or ServeSettings()
        self.forward_context = forward_context
        self.lock = threading.Lock()  # one network, one request at a time
        self.pages: dict[str, _Page] = {}
        self.uploads = Path(tempfile.mkdtemp(prefix="sam3d-serve-"))  # uploaded scans, one folder each
        self._secret = secrets.token_bytes(32)  # signs the page tokens: a restart makes pages ask anew
        self.file_owners: dict[str, str] = {}  # file stem of saved masks -> the page that saves under it

    def _signature(self, page_id: str) -> str:
        return hmac.new(self._secret, page_id.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        """A new page token: a random page id and its signature, which only this server can make."""
        page_id = secrets.token_hex(16)
        return f"{page_id}.{self._signature(page_id)}"

    def page_id(self, token: str | None) -> str | None:
        """The page id of a token this server issued; None for anything else."""
        page_id, _, signature = (token or "").partition(".")
        if len(page_id) != 32 or not hmac.compare_digest(
            signature.encode(), self._signature(page_id).encode()
        ):
            return None
        return page_id

    def file_stem(self, key: str, case: str) -> str:
        """The name the page of ``key`` saves the masks of ``case`` under (``predict``'s for the first page).

        The first page to save a case gets the case id, as ``sam3d predict`` writes; another page saving
        the same case gets ``<case>_page<n>``, so pages never overwrite each other's files.
        """
        number = 1
        while True:
            stem = case if number == 1 else f"{case}_page{number}"
            if self.file_owners.setdefault(stem, key) == key:
                return stem
            number += 1

    @property
    def max_upload(self) -> int:
        """The largest upload accepted, in bytes: a float32 scan of ``max_voxels`` and a header."""
        return self.settings.view.max_voxels * 4 + (1 << 20)

    def find(self, key: str) -> _Page | None:
        """The page of ``key``, if it has a scan open (it was just seen: not idle, not left)."""
        page = self.pages.get(key)
        if page is not None:
            page.last_seen, page.left = time.monotonic(), False
        return page

    def page(self, key: str) -> _Page:
        """The page of ``key``, which must have a scan open."""
        page = self.find(key)
        if page is None:
            raise Sam3dError("no scan is open on this page: choose one or upload one")
        return page

    def make_room(self, key: str) -> None:
        """Make room for a page of ``key`` (which may replace its own): close a closed or idle page, or refuse."""
        if key in self.pages or len(self.pages) < self.settings.max_sessions:
            return
        now = time.monotonic()
        timeout = self.settings.session_timeout_s
        free = [k for k, p in self.pages.items() if p.left or now - p.last_seen >= timeout]
        if not free:
            raise Sam3dError(
                f"this server already has scans open in {len(self.pages)} other page(s), its limit "
                f"(--max_sessions {self.settings.max_sessions}); close one of those pages, wait until one has "
                f"been idle for {timeout / 60:.0f} min, or restart with a larger --max_sessions"
            )
        oldest = min(free, key=lambda k: self.pages[k].last_seen)
        logger.info("page %s was closed or idle: %s is closed", oldest[:8], self.pages[oldest].display_name)
        self.pages.pop(oldest).close()

    def put(self, key: str, page: _Page) -> None:
        """Give ``key`` its new page (after :meth:`make_room`), closing its previous one."""
        if key in self.pages:
            self.pages.pop(key).close()
        self.pages[key] = page

    def leave(self, key: str) -> None:
        """Mark the page of ``key`` as left (its tab was closed or reloaded): the first to give its place."""
        if key in self.pages:
            self.pages[key].left = True

    def open(self, key: str, path: Path, display_name: str, upload: Path | None = None) -> dict[str, Any]:
        """Open the scan ``path`` on the page of ``key`` (under the lock); the page's state."""
        with self.lock:
            self.make_room(key)  # before loading: a full server refuses at once
            start = time.perf_counter()
            scan = open_scan(path, self.preprocessing, self.settings.view.max_voxels)
            view = ScanView(self.net, scan, self.settings.view, self.output, self.forward_context)
            page = _Page(view, display_name, upload)
            self.put(key, page)
            logger.info(
                "%s opened in %.1f s: %s voxels on the network grid",
                display_name,
                time.perf_counter() - start,
                "x".join(map(str, scan.image.shape)),
            )
            return _state(page)

    def close(self) -> None:
        """Remove the uploaded scans (when the server stops)."""
        shutil.rmtree(self.uploads, ignore_errors=True)


def _sessions(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


def _session_id(request: Request) -> str:
    """The page id of the request's page token (header only: a URL would leak it into logs and history)."""
    key = _sessions(request).page_id(request.headers.get(PAGE_HEADER))
    if key is None:
        raise Sam3dError(
            f"the request has no valid page token ({PAGE_HEADER} header from POST /api/page; the server may "
            "have restarted): reload the page"
        )
    return key


# The most voxels one scribble may pass through (a stroke across a 2048-voxel slice and back, many times).
MAX_SCRIBBLE_VOXELS = 65536


def _is_voxel(value: Any) -> TypeGuard[list[float]]:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in value)
    )


def _point(body: dict[str, Any]) -> tuple[float, float, float]:
    point = body.get("point")
    if not _is_voxel(point):
        raise Sam3dError(f"a click needs a point [d, h, w] of three numbers, got {point!r}")
    return _triple(point)


def _triple(voxel: list[float]) -> tuple[float, float, float]:
    return float(voxel[0]), float(voxel[1]), float(voxel[2])


def _corners(body: dict[str, Any]) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    lower, upper = body.get("lower"), body.get("upper")
    if not _is_voxel(lower) or not _is_voxel(upper):
        raise Sam3dError(
            f"a box needs corners lower and upper, each [d, h, w] of three numbers, got {lower!r} and {upper!r}"
        )
    return _triple(lower), _triple(upper)


def _voxels(body: dict[str, Any]) -> list[tuple[float, float, float]]:
    voxels = body.get("voxels")
    if not isinstance(voxels, list) or not voxels or not all(_is_voxel(v) for v in voxels):
        shown = repr(voxels) if len(repr(voxels)) < 80 else repr(voxels)[:77] + "..."
        raise Sam3dError(
            f"a scribble needs voxels: a non-empty list of [d, h, w] of three numbers, got {shown}"
        )
    if len(voxels) > MAX_SCRIBBLE_VOXELS:
        raise Sam3dError(
            f"a scribble may pass through at most {MAX_SCRIBBLE_VOXELS} voxels, got {len(voxels)}: draw a shorter one"
        )
    return [(float(d), float(h), float(w)) for d, h, w in voxels]


def _positive(body: dict[str, Any]) -> bool:
    positive = body.get("positive", True)
    if not isinstance(positive, bool):
        raise Sam3dError(f"positive must be true or false, got {positive!r}")
    return positive


def _state(page: _Page) -> dict[str, Any]:
    """What the page draws: the scan, its clicks, crop, mask and volume."""
    return {"scan": page.view.describe(page.display_name), **page.view.state()}


# Handlers of the routes. The plain functions Starlette runs in its thread pool, so they may wait for
# the lock; the async ones hand every wait for the lock or the network to the thread pool.


def page_file(request: Request) -> FileResponse:
    """``GET /`` and ``/static/{name}``: the page's files."""
    name = request.path_params.get("name", "index.html")
    if name not in PAGE_FILES:
        raise Sam3dError(f"no page file {name!r}")
    # Revalidated on every load, so a page never runs an older sam3d's script.
    return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


def config(request: Request) -> JSONResponse:
    """``GET /api/config``: the listed scans, the settings and the output folder."""
    store = _sessions(request)
    return JSONResponse(
        {
            "scans": [path.name for path in store.scans],
            "problems": store.problems,
            "protocol": store.settings.view.protocol,
            "crop_size": list(store.net.config.crop_size),
            "threshold": store.settings.view.threshold,
            "prompts": ["click", *(kind for kind in store.net.config.dense_prompts if kind != "mask")],
            "window": list(store.preprocessing.window),
            "click_mode": store.settings.view.click_mode,
            "output_dir": str(store.output.output_dir),
            "version": __version__,
        }
    )


async def page_token(request: Request) -> JSONResponse:
    """``POST /api/page {"page": token}`` (token optional): the page's token, the same if still valid, else new."""
    store = _sessions(request)
    given = (await json_object(request)).get("page")
    valid = isinstance(given, str) and store.page_id(given) is not None
    return JSONResponse({"page": given if valid else store.issue()})


def current(request: Request) -> JSONResponse:
    """``GET /api/state``: the page's scan and clicks (``{"scan": null}`` without a scan), after a reload."""
    store = _sessions(request)
    with store.lock:
        page = store.find(_session_id(request))
        return JSONResponse({"scan": None} if page is None else _state(page))


def leave(request: Request) -> Response:
    """``POST /api/leave``: the tab was closed or reloaded."""
    store = _sessions(request)
    with store.lock:
        store.leave(_session_id(request))
    return Response(status_code=204)


async def open_listed(request: Request) -> JSONResponse:
    """``POST /api/open {"index": i}``: open the ``i``-th listed scan."""
    store = _sessions(request)
    index = (await json_object(request)).get("index")
    if not isinstance(index, int) or not 0 <= index < len(store.scans):
        raise Sam3dError(f"no listed scan number {index!r}: choose one of the {len(store.scans)} listed")
    path = store.scans[index]
    return JSONResponse(await run_in_threadpool(store.open, _session_id(request), path, path.name))


def _reserve(store: SessionStore, key: str) -> None:
    with store.lock:
        store.make_room(key)


async def upload(request: Request) -> JSONResponse:
    """``POST /api/upload?name=...``: open the scan file of the body."""
    store = _sessions(request)
    key = _session_id(request)
    await run_in_threadpool(_reserve, store, key)  # a full server refuses before the upload
    name = Path(request.query_params.get("name", "")).name
    if not name or name.startswith("."):
        raise Sam3dError("the upload has no file name")
    advice = f" for --max_voxels {store.settings.view.max_voxels}: crop the scan or raise --max_voxels"
    content = await limited_body(request, store.max_upload, name, advice)
    folder = Path(tempfile.mkdtemp(dir=store.uploads, prefix=key[:8]))
    path = folder / name
    path.write_bytes(content)
    try:
        refuse_detached_data(path, name)
        return JSONResponse(await run_in_threadpool(store.open, key, path, f"{name} (uploaded)", folder))
    except Sam3dError as error:
        shutil.rmtree(folder, ignore_errors=True)
        # The page names the file as the user chose it, never the server's folder of the upload.
        raise Sam3dError(str(error).replace(f"{folder}{os.sep}", "").replace(str(folder), name)) from None
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def volume(request: Request) -> Response:
    """``GET /api/volume``: the intensities of the page's scan (int16, see :meth:`ScanView.display`)."""
    store = _sessions(request)
    with store.lock:
        view = store.page(_session_id(request)).view
    return Response(view.display(), media_type="application/octet-stream")


async def _edit(request: Request, action: Callable[[ScanView, dict[str, Any]], None]) -> JSONResponse:
    """Apply ``action`` to the page's scan with the request's JSON body (under the lock); the new state."""
    store = _sessions(request)
    body = await json_object(request)

    def run() -> dict[str, Any]:
        with store.lock:
            page = store.page(_session_id(request))
            action(page.view, body)
            return _state(page)

    return JSONResponse(await run_in_threadpool(run))


def _log(view: ScanView, what: str, encoded: bool) -> None:
    objects = view.objects.objects
    logger.info(
        "%s: %s%s: %.3f s (%s), %.1f mL",
        view.name,
        f"{view.objects.selected.name}: " if len(objects) > 1 else "",
        what,
        view.seconds,
        "crop encoded" if encoded else "crop encoding reused",
        view.volume_ml(),
    )


def _box(view: ScanView, body: dict[str, Any]) -> None:
    lower, upper = _corners(body)
    encoded = view.box(lower, upper)
    corners = " to ".join("(" + ", ".join(f"{c:.0f}" for c in corner) + ")" for corner in (lower, upper))
    _log(view, f"box {corners}", encoded)


def _scribble(view: ScanView, body: dict[str, Any]) -> None:
    voxels, positive = _voxels(body), _positive(body)
    encoded = view.scribble(voxels, positive)
    _log(view, f"{'positive' if positive else 'negative'} scribble through {len(voxels)} voxel(s)", encoded)


def _click(view: ScanView, body: dict[str, Any]) -> None:
    point, positive = _point(body), _positive(body)
    encoded = view.click(point, positive)
    where = ", ".join(f"{c:.0f}" for c in point)
    _log(
        view,
        f"click {len(view.session.points)} ({'positive' if positive else 'negative'}) at ({where})",
        encoded,
    )


def _undo(view: ScanView, body: dict[str, Any]) -> None:
    view.undo()
    logger.info(
        "%s: undo, %d interaction(s) left: %.3f s",
        view.name,
        len(view.session.interactions),
        view.seconds or 0,
    )


def _reset(view: ScanView, body: dict[str, Any]) -> None:
    view.reset()


def _add_object(view: ScanView, body: dict[str, Any]) -> None:
    added = view.objects.add(body.get("name"))
    logger.info("%s: object %d (%s) added", view.name, added.id, added.name)


def _select_object(view: ScanView, body: dict[str, Any]) -> None:
    view.objects.select(body.get("id"))


def _rename_object(view: ScanView, body: dict[str, Any]) -> None:
    renamed = view.objects.rename(body.get("id"), body.get("name"))
    logger.info("%s: object %d renamed %s", view.name, renamed.id, renamed.name)


def _delete_object(view: ScanView, body: dict[str, Any]) -> None:
    deleted = view.objects.get(body.get("id"))
    view.objects.delete(deleted.id)
    logger.info("%s: object %d (%s) deleted", view.name, deleted.id, deleted.name)


async def click(request: Request) -> JSONResponse:
    """``POST /api/click {"point": [d, h, w], "positive": bool}``: add a click."""
    return await _edit(request, _click)


async def box(request: Request) -> JSONResponse:
    """``POST /api/box {"lower": [d, h, w], "upper": [d, h, w]}``: add a box (corners inside it)."""
    return await _edit(request, _box)


async def scribble(request: Request) -> JSONResponse:
    """``POST /api/scribble {"voxels": [[d, h, w], ...], "positive": bool}``: add a scribble."""
    return await _edit(request, _scribble)


async def undo(request: Request) -> JSONResponse:
    """``POST /api/undo``: remove the selected object's last interaction (click, box or scribble)."""
    return await _edit(request, _undo)


async def reset(request: Request) -> JSONResponse:
    """``POST /api/reset``: remove every interaction of the selected object."""
    return await _edit(request, _reset)


async def add_object(request: Request) -> JSONResponse:
    """``POST /api/objects/add {"name": str}`` (name optional): add an object and select it."""
    return await _edit(request, _add_object)


async def select_object(request: Request) -> JSONResponse:
    """``POST /api/objects/select {"id": int}``: select an object (interactions, undo and reset go to it)."""
    return await _edit(request, _select_object)


async def rename_object(request: Request) -> JSONResponse:
    """``POST /api/objects/rename {"id": int, "name": str}``: rename an object."""
    return await _edit(request, _rename_object)


async def delete_object(request: Request) -> JSONResponse:
    """``POST /api/objects/delete {"id": int}``: delete an object and its interactions (not the last one)."""
    return await _edit(request, _delete_object)


def save(request: Request) -> JSONResponse:
    """``POST /api/save``: write the masks and the interactions into the output folder; their paths and volumes."""
    store = _sessions(request)
    with store.lock:
        key = _session_id(request)
        view = store.page(key).view
        saved = view.save(store.file_stem(key, view.scan.case_id))
    logger.info("%s: saved %s (%.1f mL)", view.name, ", ".join(saved["files"].values()), saved["volume_ml"])
    return JSONResponse(saved)


def download(request: Request) -> Response:
    """``GET /api/download/{kind}``: the interactions file, or a saved file.

    Kinds: ``mask`` and ``probability`` (one object), ``labels`` and ``object-<id>`` (several objects).
    """
    store = _sessions(request)
    kind = request.path_params["kind"]
    with store.lock:
        view = store.page(_session_id(request)).view
        if kind == "interactions":
            return PlainTextResponse(
                view.interactions_json(),
                media_type="application/json",
                headers={"Content-Disposition": _attachment(f"{view.scan.case_id}_interactions.json")},
            )
    path = view.saved.get(kind)
    if path is None:
        raise Sam3dError(f"no {kind} saved for {view.name} yet: press Save first")
    return FileResponse(path, filename=path.name)


def _attachment(filename: str) -> str:
    """A Content-Disposition for any file name (RFC 6266: an ASCII fallback and the UTF-8 name)."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=utf-8''{quote(filename)}"


async def user_error(request: Request, error: Exception) -> JSONResponse:
    """A :class:`Sam3dError`: 400 with its message, which the page shows."""
    logger.info("refused %s %s: %s", request.method, request.url.path, error)
    return JSONResponse({"error": str(error)}, status_code=400)


async def server_error(request: Request, error: Exception) -> JSONResponse:
    """Any other error: 500 naming it (Starlette re-raises after this answer, so the log has the traceback)."""
    return JSONResponse(
        {"error": f"internal error ({type(error).__name__}: {error}); the server log has the details"},
        status_code=500,
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Remove the uploaded scans when the server stops."""
    yield
    store: SessionStore = app.state.sessions
    store.close()


ROUTES = [
    Route("/", page_file),
    Route("/static/{name:str}", page_file),
    Route("/api/config", config),
    Route("/api/page", page_token, methods=["POST"]),
    Route("/api/state", current),
    Route("/api/leave", leave, methods=["POST"]),
    Route("/api/open", open_listed, methods=["POST"]),
    Route("/api/upload", upload, methods=["POST"]),
    Route("/api/volume", volume),
    Route("/api/click", click, methods=["POST"]),
    Route("/api/box", box, methods=["POST"]),
    Route("/api/scribble", scribble, methods=["POST"]),
    Route("/api/undo", undo, methods=["POST"]),
    Route("/api/reset", reset, methods=["POST"]),
    Route("/api/objects/add", add_object, methods=["POST"]),
    Route("/api/objects/select", select_object, methods=["POST"]),
    Route("/api/objects/rename", rename_object, methods=["POST"]),
    Route("/api/objects/delete", delete_object, methods=["POST"]),
    Route("/api/save", save, methods=["POST"]),
    Route("/api/download/{kind:str}", download),
]


def create_app(sessions: SessionStore, api_key: str | None = None, host: str = "127.0.0.1") -> Starlette:
    """The ``sam3d serve`` application: the :data:`ROUTES` and nnInteractive's over ``sessions`` (``app.state.sessions``).

    ``api_key``: every request must carry it (:mod:`sam3d.serve.auth`). ``host``: the address served
    (``--host``), a host name requests may give besides IP addresses and this machine's names
    (:mod:`sam3d.serve.guard`).
    """
    keyed = [Middleware(ApiKeyMiddleware, api_key=api_key)] if api_key else []
    guard = Middleware(GuardMiddleware, names=server_names(host))
    app = Starlette(
        routes=[*ROUTES, *nninteractive.ROUTES],
        middleware=[guard, *keyed, Middleware(GZipMiddleware, minimum_size=4096, compresslevel=1)],
        exception_handlers={Sam3dError: user_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.sessions = sessions
    return app


def memory_note(settings: ServeSettings) -> str:
    """The memory the server may hold for scans at most, in words."""
    gib = settings.max_sessions * settings.view.max_voxels * BYTES_PER_VOXEL / 2**30
    return f"up to {settings.max_sessions} pages with scans of up to {settings.view.max_voxels:,} voxels: ~{gib:.0f} GiB"
