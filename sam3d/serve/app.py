"""The web application of ``sam3d serve`` (Starlette): the page, its scans and one click session per page.

Each page (browser tab) sends a random session id with every request; the server keeps one
:class:`~sam3d.serve.viewer.ScanView` per id, so two browsers never mix their clicks. The network runs
for one request at a time. Every user error answers ``400 {"error": message}``, which the page shows;
anything else is logged with its traceback and answers 500, and the server goes on serving.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sam3d import __version__
from sam3d.data.preprocessing import Preprocessing
from sam3d.errors import Sam3dError
from sam3d.models import VolumetricSam
from sam3d.serve.viewer import BYTES_PER_VOXEL, OutputOptions, ScanView, ViewSettings, open_scan

__all__ = ["ServeSettings", "create_app"]

logger = logging.getLogger("sam3d.serve")
STATIC = Path(__file__).parent / "static"
PAGE_FILES = ("index.html", "app.js", "style.css")
SESSION_HEADER = "X-Sam3d-Session"


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


class _Pages:
    """The pages with a scan open, at most ``settings.max_sessions``.

    A new page takes the place of one whose tab was closed, or of one idle for ``session_timeout_s``.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.pages: dict[str, _Page] = {}

    def find(self, key: str) -> _Page | None:
        page = self.pages.get(key)
        if page is not None:
            page.last_seen, page.left = time.monotonic(), False
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
        if key in self.pages:
            self.pages[key].left = True


def _session_id(request: Request) -> str:
    # Links (downloads) and beacons cannot send a header: they name the session in the query.
    key = request.headers.get(SESSION_HEADER) or request.query_params.get("session", "")
    if not 8 <= len(key) <= 64 or not key.replace("-", "").isalnum():
        raise Sam3dError("the page sent no session id: reload the page")
    return key


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise Sam3dError("the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise Sam3dError("the request must be a JSON object")
    return body


def _point(body: dict[str, Any]) -> tuple[float, float, float]:
    point = body.get("point")
    if not isinstance(point, list) or len(point) != 3 or not all(isinstance(c, int | float) for c in point):
        raise Sam3dError(f"a click needs a point [d, h, w] of three numbers, got {point!r}")
    return float(point[0]), float(point[1]), float(point[2])


def create_app(
    net: VolumetricSam,
    preprocessing: Preprocessing,
    output: OutputOptions,
    scans: list[Path],
    settings: ServeSettings | None = None,
    forward_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    problems: list[str] | None = None,
) -> Starlette:
    """The ``sam3d serve`` application.

    Args:
        net: The network, on its device, in eval mode.
        preprocessing: The checkpoint's preprocessing.
        output: Where Save writes: the ``predict`` writer (its ``output_dir`` and ``probabilities``).
        scans: Scan files listed on the page.
        settings: Segmentation settings and limits.
        forward_context: Context of every network call (the trainer's precision).
        problems: Inputs that name no usable scan, shown on the page.
    """
    settings = settings or ServeSettings()
    pages = _Pages(settings)
    lock = threading.Lock()  # one network, one request at a time
    uploads = Path(tempfile.mkdtemp(prefix="sam3d-serve-"))
    max_upload = settings.view.max_voxels * 4 + (1 << 20)

    def locked(function: Callable[..., Any], *args: Any) -> Any:
        with lock:
            return function(*args)

    def page_of(request: Request) -> _Page:
        page = pages.find(_session_id(request))
        if page is None:
            raise Sam3dError("no scan is open on this page: choose one or upload one")
        return page

    def state(page: _Page) -> dict[str, Any]:
        return {"scan": page.view.describe(page.display_name), **page.view.state()}

    def open_page(
        request: Request, path: Path, display_name: str, upload: Path | None = None
    ) -> dict[str, Any]:
        key = _session_id(request)
        with lock:
            pages.make_room(key)  # before loading: a full server refuses at once
            start = time.perf_counter()
            scan = open_scan(path, preprocessing, settings.view.max_voxels)
            page = _Page(ScanView(net, scan, settings.view, output, forward_context), display_name, upload)
            pages.put(key, page)
            logger.info(
                "%s opened in %.1f s: %s voxels on the network grid",
                display_name,
                time.perf_counter() - start,
                "x".join(map(str, scan.image.shape)),
            )
            return state(page)

    def config(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "scans": [path.name for path in scans],
                "problems": problems or [],
                "protocol": settings.view.protocol,
                "crop_size": list(net.config.crop_size),
                "threshold": settings.view.threshold,
                "window": list(preprocessing.window),
                "output_dir": str(output.output_dir),
                "version": __version__,
            }
        )

    def current(request: Request) -> JSONResponse:
        with lock:
            page = pages.find(_session_id(request))
            return JSONResponse({"scan": None} if page is None else state(page))

    def leave(request: Request) -> Response:
        with lock:
            pages.leave(_session_id(request))
        return Response(status_code=204)

    async def open_listed(request: Request) -> JSONResponse:
        index = (await _json(request)).get("index")
        if not isinstance(index, int) or not 0 <= index < len(scans):
            raise Sam3dError(f"no listed scan number {index!r}: choose one of the {len(scans)} listed")
        return JSONResponse(await run_in_threadpool(open_page, request, scans[index], scans[index].name))

    async def upload(request: Request) -> JSONResponse:
        key = _session_id(request)
        await run_in_threadpool(locked, pages.make_room, key)  # a full server refuses before the upload
        name = Path(request.query_params.get("name", "")).name
        if not name or name.startswith("."):
            raise Sam3dError("the upload has no file name")
        size = int(request.headers.get("content-length") or 0)
        if size > max_upload:
            raise Sam3dError(
                f"{name} is {size / 2**20:.0f} MiB, more than this server accepts ({max_upload / 2**20:.0f} MiB "
                f"for --max_voxels {settings.view.max_voxels}); crop the scan or raise --max_voxels"
            )
        folder = Path(tempfile.mkdtemp(dir=uploads, prefix=key[:8]))
        path = folder / name
        path.write_bytes(await request.body())
        try:
            return JSONResponse(
                await run_in_threadpool(open_page, request, path, f"{name} (uploaded)", folder)
            )
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def volume(request: Request) -> Response:
        with lock:
            view = page_of(request).view
        return Response(view.display(), media_type="application/octet-stream")

    def edit(action: Callable[[ScanView, dict[str, Any]], None]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            body = await _json(request)

            def run() -> dict[str, Any]:
                with lock:
                    page = page_of(request)
                    action(page.view, body)
                    return state(page)

            return JSONResponse(await run_in_threadpool(run))

        return endpoint

    def click(view: ScanView, body: dict[str, Any]) -> None:
        point, positive = _point(body), bool(body.get("positive", True))
        encoded = view.click(point, positive)
        logger.info(
            "%s: click %d (%s) at (%s): %.3f s (%s), %.1f mL",
            view.name,
            len(view.session.points),
            "positive" if positive else "negative",
            ", ".join(f"{c:.0f}" for c in point),
            view.seconds,
            "crop encoded" if encoded else "crop encoding reused",
            view.volume_ml(),
        )

    def undo(view: ScanView, body: dict[str, Any]) -> None:
        view.undo()
        logger.info(
            "%s: undo, %d click(s) left: %.3f s", view.name, len(view.session.points), view.seconds or 0
        )

    def reset(view: ScanView, body: dict[str, Any]) -> None:
        view.reset()

    def save(request: Request) -> JSONResponse:
        with lock:
            view = page_of(request).view
            saved = view.save()
        logger.info(
            "%s: saved %s (%.1f mL)", view.name, ", ".join(saved["files"].values()), saved["volume_ml"]
        )
        return JSONResponse(saved)

    def download(request: Request) -> Response:
        kind = request.path_params["kind"]
        with lock:
            view = page_of(request).view
        if kind == "clicks":
            return PlainTextResponse(
                view.clicks_csv(),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{view.scan.case_id}_clicks.csv"'},
            )
        path = view.saved.get(kind)
        if path is None:
            raise Sam3dError(f"no {kind} saved for {view.name} yet: press Save first")
        return FileResponse(path, filename=path.name)

    def page_file(request: Request) -> FileResponse:
        name = request.path_params.get("name", "index.html")
        if name not in PAGE_FILES:
            raise Sam3dError(f"no page file {name!r}")
        # Revalidated on every load, so a page never runs an older sam3d's script.
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    async def user_error(request: Request, error: Exception) -> JSONResponse:
        logger.info("refused %s %s: %s", request.method, request.url.path, error)
        return JSONResponse({"error": str(error)}, status_code=400)

    async def server_error(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server logs the traceback.
        return JSONResponse(
            {"error": f"internal error ({type(error).__name__}: {error}); the server log has the details"},
            status_code=500,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        shutil.rmtree(uploads, ignore_errors=True)

    routes = [
        Route("/", page_file),
        Route("/static/{name:str}", page_file),
        Route("/api/config", config),
        Route("/api/state", current),
        Route("/api/leave", leave, methods=["POST"]),
        Route("/api/open", open_listed, methods=["POST"]),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/volume", volume),
        Route("/api/click", edit(click), methods=["POST"]),
        Route("/api/undo", edit(undo), methods=["POST"]),
        Route("/api/reset", edit(reset), methods=["POST"]),
        Route("/api/save", save, methods=["POST"]),
        Route("/api/download/{kind:str}", download),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(GZipMiddleware, minimum_size=4096, compresslevel=1)],
        exception_handlers={Sam3dError: user_error, Exception: server_error},
        lifespan=lifespan,
    )


def memory_note(settings: ServeSettings) -> str:
    """The memory the server may hold for scans at most, in words."""
    gib = settings.max_sessions * settings.view.max_voxels * BYTES_PER_VOXEL / 2**30
    return f"up to {settings.max_sessions} pages with scans of up to {settings.view.max_voxels:,} voxels: ~{gib:.0f} GiB"
