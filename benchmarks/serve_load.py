"""`sam3d serve` under load: several pages clicking at once never get each other's masks.

    .venv/bin/python benchmarks/serve_load.py                     # 8 pages, 600 clicks in all
    .venv/bin/python benchmarks/serve_load.py --pages 4 --clicks 100 --timeout 300

The application runs in this process on a loopback port (uvicorn in a thread), with the tiny network
(random weights, one crop a click: ``paper``) and one synthetic phantom per page. First, one page alone clicks a fixed round of
clicks on each phantom (positive, then negative and positive corrections, then Reset) and keeps every
answer's mask: the reference. Then the pages click their rounds at the same time, each from its own
thread, until ``--clicks`` clicks are done; every answer must be its own page's scan, clicks and mask,
voxel for voxel as the reference (a mask of another page, or of an interleaved state, fails). The run
is bounded by ``--timeout`` seconds (then it stops and says how far it got). Prints clicks per second,
the latency percentiles and the number of mismatches; exits 1 on any mismatch or error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from serve_clicks import PREPROCESSING, serve_in_thread

from sam3d.callbacks import PredictionWriter
from sam3d.data.synthetic import make_synthetic_dataset
from sam3d.models import build_volumetric_sam
from sam3d.serve import ServeSettings, SessionStore, ViewSettings, create_app

# One round on a phantom: offsets from the volume's centre (d, h, w) and signs; then Reset.
ROUND = (((0, 0, 0), True), ((0, 0, 6), False), ((0, 3, 0), True), ((2, 0, -4), False), ((0, -3, 2), True))


class Page:
    """One browser page: its token, its scan, its requests."""

    def __init__(self, address: str, deadline: float) -> None:
        self.address, self.deadline, self.token = address, deadline, ""
        self.token = self.request("/api/page", {})["page"]

    def request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` as JSON (GET without one), with the page's token; the JSON answer."""
        headers = {"Content-Type": "application/json", "X-Sam3d-Page": self.token}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.address + path, data, headers=headers)
        with urllib.request.urlopen(request, timeout=max(1.0, self.deadline - time.monotonic())) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer


def _round_points(shape: list[int]) -> list[tuple[list[int], bool]]:
    centre = [n // 2 for n in shape]
    return [([c + o for c, o in zip(centre, offset, strict=True)], positive) for offset, positive in ROUND]


def reference_masks(address: str, scans: int, deadline: float) -> dict[int, list[Any]]:
    """Each phantom's mask after each click of its round, from one page clicking alone."""
    page, masks = Page(address, deadline), {}
    for index in range(scans):
        shape = page.request("/api/open", {"index": index})["scan"]["shape"]
        masks[index] = [
            page.request("/api/click", {"point": p, "positive": s})["mask"] for p, s in _round_points(shape)
        ]
    return masks


def click_rounds(
    address: str, index: int, clicks: int, reference: list[Any], deadline: float
) -> tuple[int, int, list[float], str | None]:
    """A page clicking its phantom's rounds: clicks done, mismatches, seconds per click, the error if any."""
    done, mismatches, seconds = 0, 0, []
    try:
        page = Page(address, deadline)
        opened = page.request("/api/open", {"index": index})
        name, points = opened["scan"]["name"], _round_points(opened["scan"]["shape"])
        while done < clicks and time.monotonic() < deadline:
            for step, (point, positive) in enumerate(points):
                start = time.perf_counter()
                answer = page.request("/api/click", {"point": point, "positive": positive})
                seconds.append(time.perf_counter() - start)
                done += 1
                own = [{"point": [float(c) for c in p], "positive": s} for p, s in points[: step + 1]]
                state = page.request("/api/state") if step == len(points) - 1 else None
                if answer["mask"] != reference[step] or answer["clicks"] != own:
                    mismatches += 1
                if state is not None and state["scan"]["name"] != name:
                    mismatches += 1
                if done >= clicks:
                    break
            page.request("/api/reset", {})
    except (
        OSError,
        ValueError,
        KeyError,
    ) as error:  # reported; the other pages go on (HTTPError is an OSError)
        return done, mismatches, seconds, f"{type(error).__name__}: {error}"
    return done, mismatches, seconds, None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=8, help="pages clicking at once")
    parser.add_argument("--clicks", type=int, default=600, help="clicks in all, shared among the pages")
    parser.add_argument("--timeout", type=float, default=1200.0, help="stop after this many seconds")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = build_volumetric_sam("tiny").eval()
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory() as folder:
        root = make_synthetic_dataset(Path(folder) / "data", num_cases=args.pages)
        scans = sorted((root / "imagesTr").glob("*.nii.gz"))
        # The reference page and the clicking ones; one crop a click (`paper`): a random network's mask
        # would grow into every crop under `full`, and this measures isolation, not crop growth.
        settings = ServeSettings(ViewSettings(protocol="paper"), max_sessions=args.pages + 1)
        app = create_app(SessionStore(net, PREPROCESSING, PredictionWriter(folder), scans, settings))
        server, address = serve_in_thread(app)
        reference = reference_masks(address, len(scans), deadline)
        share = [args.clicks // args.pages + (i < args.clicks % args.pages) for i in range(args.pages)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.pages) as pool:
            results = list(
                pool.map(
                    lambda i: click_rounds(address, i, share[i], reference[i], deadline), range(args.pages)
                )
            )
        elapsed = time.perf_counter() - start
        server.should_exit = True
    done = sum(r[0] for r in results)
    mismatches = sum(r[1] for r in results)
    errors = [f"page {i}: {r[3]}" for i, r in enumerate(results) if r[3]]
    latencies = sorted(s for r in results for s in r[2])
    print(
        f"{args.pages} pages, {done} of {args.clicks} clicks in {elapsed:.1f} s ({done / elapsed:.2f} clicks/s)"
    )
    if latencies:
        median = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        print(
            f"click round trip: median {median:.3f} s, 95th percentile {p95:.3f} s, max {latencies[-1]:.3f} s"
        )
    print(f"answers not the page's own (scan, clicks or mask against the reference): {mismatches}")
    for line in errors:
        print(line)
    if done < args.clicks:
        print(f"stopped at --timeout {args.timeout:.0f} s")
    sys.exit(1 if mismatches or errors else 0)


if __name__ == "__main__":
    main()
