"""Click latency of `sam3d serve`: a first click (the crop is encoded) and correction clicks, over HTTP.

    .venv/bin/python benchmarks/serve_clicks.py                       # tiny network, random weights
    .venv/bin/python benchmarks/serve_clicks.py --ckpt runs/.../best.ckpt  # a trained tiny network
    .venv/bin/python benchmarks/serve_clicks.py --variant vit_b --corrections 2

The application runs in this process on a loopback port (uvicorn in a thread) with one synthetic phantom;
each click is a POST as the page sends it. Reported per click: the network time the server logs and the
round trip (JSON of the mask's bounding box included; the page's drawing is not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
import uvicorn
from starlette.applications import Starlette

from sam3d.callbacks import PredictionWriter
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.synthetic import make_synthetic_dataset
from sam3d.models import build_volumetric_sam
from sam3d.models.checkpoints import load_weights_file
from sam3d.serve import ServeSettings, SessionStore, create_app
from sam3d.serve.server import bind

# configs/synthetic.yaml's preprocessing
PREPROCESSING = Preprocessing((1.0, 1.0, 1.0), (-100.0, 200.0), 50.0, 40.0, (1,))


def _post(address: str, path: str, body: dict, token: str = "") -> tuple[dict, float]:
    headers = {"Content-Type": "application/json", **({"X-Sam3d-Page": token} if token else {})}
    request = urllib.request.Request(address + path, json.dumps(body).encode(), headers=headers)
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        result = json.loads(response.read())
    return result, time.perf_counter() - start


def serve_in_thread(app: Starlette) -> tuple[uvicorn.Server, str]:
    """Serve ``app`` on a free loopback port from a daemon thread; the server (set ``should_exit``) and address."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--ckpt", help="a sam3d checkpoint of the variant (default: random weights)")
    parser.add_argument("--corrections", type=int, default=5, help="correction clicks after the first")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = build_volumetric_sam(args.variant)
    if args.ckpt:
        state = load_weights_file(args.ckpt, "--ckpt")["state_dict"]
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    net.eval()
    with tempfile.TemporaryDirectory() as folder:
        root = make_synthetic_dataset(Path(folder) / "data", num_cases=1)
        scan = root / "imagesTr" / "phantom_000.nii.gz"
        app = create_app(SessionStore(net, PREPROCESSING, PredictionWriter(folder), [scan], ServeSettings()))
        server, address = serve_in_thread(app)
        token = _post(address, "/api/page", {})[0]["page"]  # as the page does
        opened, _ = _post(address, "/api/open", {"index": 0}, token)
        centre = [n // 2 for n in opened["scan"]["shape"]]
        rows = []
        for index in range(args.corrections + 1):
            point = [centre[0], centre[1], centre[2] + 2 * index]
            result, seconds = _post(
                address, "/api/click", {"point": point, "positive": index % 2 == 0}, token
            )
            rows.append((result["seconds"], seconds))
        server.should_exit = True
    print(
        f"{args.variant} ({'trained' if args.ckpt else 'random weights'}), crop {list(net.config.crop_size)}, "
        f"volume {opened['scan']['shape']}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"first click: network {rows[0][0]:.3f} s, round trip {rows[0][1]:.3f} s")
    if len(rows) > 1:
        network, trip = (statistics.median(r[i] for r in rows[1:]) for i in (0, 1))
        print(
            f"correction clicks (median of {len(rows) - 1}): network {network:.3f} s, round trip {trip:.3f} s"
        )


if __name__ == "__main__":
    main()
