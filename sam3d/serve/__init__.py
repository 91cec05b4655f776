"""``sam3d serve``: a page to click on scans in the browser, see the 3D mask, correct it and save it.

:mod:`~sam3d.serve.viewer` holds one open scan (its objects' clicks, boxes and scribbles through
:class:`sam3d.objects.ObjectSessions`, saving through :func:`sam3d.data.scans.write_prediction` or, for
several objects, :func:`sam3d.data.scans.write_objects` as ``predict`` does, with the interactions file
``predict`` replays), :mod:`~sam3d.serve.app`
the Starlette application (its route handlers over one :class:`~sam3d.serve.app.SessionStore` of the
pages, each with its token), :mod:`~sam3d.serve.guard` what keeps other web sites out (Host, Origin,
JSON only), :mod:`~sam3d.serve.server` the socket and uvicorn; ``static/`` is the page (plain canvases).
"""

from sam3d.serve.app import ServeSettings, SessionStore, create_app
from sam3d.serve.server import run
from sam3d.serve.viewer import ScanView, ViewSettings, open_scan

__all__ = ["ScanView", "ServeSettings", "SessionStore", "ViewSettings", "create_app", "open_scan", "run"]
