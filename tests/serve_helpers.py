"""Helpers of the `sam3d serve` tests: a stand-in network, phantoms on the network grid, a live server."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import torch
import uvicorn
from scipy import ndimage

from sam3d.callbacks import PredictionWriter
from sam3d.data.clicks import first_click
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans import PredictionCase, PredictionCases, SkippedCase, load_label, load_scan
from sam3d.evaluation import EvaluationSettings
from sam3d.models import CropEncoding
from sam3d.serve import ServeSettings, SessionStore, create_app
from sam3d.serve.server import bind

# configs/synthetic.yaml's preprocessing (what its checkpoints record)
PREPROCESSING = Preprocessing((1.0, 1.0, 1.0), (-100.0, 200.0), 50.0, 40.0, (1,))


class MagicWand(torch.nn.Module):
    """Stand-in for :class:`sam3d.models.VolumetricSam` whose output means something on the phantoms.

    The object is the region connected to each positive seed whose smoothed intensity lies within
    ``tolerance`` (normalised units) of the seed's, less the voxels nearer to a negative seed than to
    every positive one. Seeds: the clicks, and with ``dense_prompts`` the centre of each box and every
    voxel of a scribble (positive or negative). It has the interface
    :class:`sam3d.interaction.InteractionSession` uses.
    """

    def __init__(
        self,
        crop_size: tuple[int, int, int] = (64, 64, 64),
        tolerance: float = 0.35,
        dense_prompts: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.config = SimpleNamespace(crop_size=crop_size, dense_prompts=dense_prompts)
        self.tolerance = tolerance
        self.weight = torch.nn.Parameter(torch.ones(()))  # the crop encoder keys on parameters and device
        self.encodings = 0

    def encode_image(self, image: torch.Tensor) -> CropEncoding:
        self.encodings += 1
        smooth = torch.from_numpy(ndimage.gaussian_filter(image[0, 0].float().numpy(), 1.0))
        return CropEncoding(smooth[None], torch.zeros(1))

    def segment(
        self,
        encoding: CropEncoding,
        points: torch.Tensor,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        scribbles: torch.Tensor | None = None,
    ) -> torch.Tensor:
        smooth = encoding.last_map[0].numpy()
        points = points[0].float()
        labels = torch.ones(len(points), dtype=torch.long) if labels is None else labels[0]
        positive, negative = points[labels == 1], points[labels == 0]
        if boxes is not None:
            centres = torch.div(boxes[0, :, :3] + boxes[0, :, 3:], 2, rounding_mode="floor")
            positive = torch.cat([positive, centres.float()])
        seeds = len(positive)  # clicks and box centres; then scribble voxels, grown unless already inside
        if scribbles is not None:
            positive = torch.cat([positive, torch.nonzero(scribbles[0, 0]).float()])
            negative = torch.cat([negative, torch.nonzero(scribbles[0, 1]).float()])
        mask = np.zeros(smooth.shape, dtype=bool)
        for n, point in enumerate(positive.round().long().tolist()):
            if n >= seeds and mask[tuple(point)]:
                continue
            near = tuple(slice(max(c - 1, 0), c + 2) for c in point)
            region, _ = ndimage.label(np.abs(smooth - smooth[near].mean()) < self.tolerance)
            mask |= region == region[tuple(point)]
        if len(negative) and len(positive):
            grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in smooth.shape), indexing="ij"), -1)
            voxels = grid.reshape(-1, 3).float()
            nearer = torch.cdist(voxels, positive).amin(1) <= torch.cdist(voxels, negative).amin(1)
            mask &= nearer.reshape(smooth.shape).numpy()
        foreground = torch.from_numpy(np.where(mask, 10.0, -10.0)).float()
        return torch.stack([-foreground, foreground])[None]


def replay(
    net: torch.nn.Module, scans: list[Path], clicks_file: Path, protocol: str = "paper"
) -> tuple[PredictionCase | SkippedCase, dict[str, Any]]:
    """`sam3d predict`'s path for the first scan: its case from the clicks file, and ``predict_step``'s result."""
    from sam3d.module import VolumetricSamModule

    case = PredictionCases(scans, clicks_file, PREPROCESSING)[0]
    module = SimpleNamespace(net=net, evaluation=EvaluationSettings(protocol=protocol))
    return case, VolumetricSamModule.predict_step(module, case, 0)  # type: ignore[arg-type]


def lesion_centre(scan_path: Path, label_path: Path) -> tuple[list[int], torch.Tensor]:
    """The deepest voxel of the phantom's lesion on the network grid ``(d, h, w)``, and that label."""
    label = load_label(label_path, load_scan(scan_path, PREPROCESSING)).bool()
    points, _ = first_click(label, "center")
    return points[0].round().long().tolist(), label


def dice(mask: np.ndarray, label: np.ndarray) -> float:
    mask, label = mask.astype(bool), label.astype(bool)
    return 2 * float((mask & label).sum()) / float(mask.sum() + label.sum())


def write_reoriented(source: Path, target: Path) -> nib.Nifti1Image:
    """A copy of a NIfTI with its voxel axes permuted and flipped (other orientation and spacing order)."""
    image = nib.load(source)
    data = np.asarray(image.dataobj)
    permuted = np.flip(data.transpose(2, 0, 1), axis=(0, 2))
    # voxel (a, b, c) of the copy is voxel (b, n1 - 1 - c, n2 - 1 - a) of the source
    _, n1, n2 = data.shape
    index = np.zeros((4, 4))
    index[0, 1], index[1, 2], index[2, 0], index[3, 3] = 1, -1, -1, 1
    index[1, 3], index[2, 3] = n1 - 1, n2 - 1
    copy = nib.Nifti1Image(np.ascontiguousarray(permuted), image.affine @ index)
    nib.save(copy, target)
    return copy


@contextmanager
def live_server(
    net: torch.nn.Module, scans: list[Path], output_dir: Path, api_key: str | None = None, **settings: object
) -> Iterator[str]:
    """A `sam3d serve` application on a free loopback port, in a thread; yields its address."""
    app = create_app(
        SessionStore(net, PREPROCESSING, PredictionWriter(str(output_dir)), scans, ServeSettings(**settings)),
        api_key,
    )
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class Page:
    """One page's requests to a live server, with urllib: as the page sends them (its token, JSON).

    ``name``: None for requests without a page token; else the page claims one from the server.
    """

    def __init__(self, address: str, name: str | None = "page-one") -> None:
        self.address, self.name, self.token = address, name, ""
        if name is not None:
            self.token = self("/api/page", {})["page"]

    def request(
        self,
        path: str,
        body: object = None,
        data: bytes | None = None,
        method: str = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        if body is not None:
            data = json.dumps(body).encode()
        method = method or ("POST" if data is not None or path in POSTS else "GET")
        sent = {"X-Sam3d-Page": self.token} if self.token else {}
        if method == "POST":
            upload = path.startswith("/api/upload")
            sent["Content-Type"] = "application/octet-stream" if upload else "application/json"
            data = b"{}" if data is None and not upload else data
        request = urllib.request.Request(
            self.address + path, data=data, method=method, headers={**sent, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def __call__(self, path: str, body: object = None, data: bytes | None = None) -> Any:
        """The JSON answer of a request that must succeed."""
        status, content = self.request(path, body, data)
        assert status == 200, content
        return json.loads(content)

    def error(self, path: str, body: object = None, data: bytes | None = None, status: int = 400) -> str:
        """The message of a request that must be refused (a user error: 400)."""
        answered, content = self.request(path, body, data)
        assert answered == status, content
        return json.loads(content)["error"]


POSTS = {"/api/undo", "/api/reset", "/api/save", "/api/objects/add", "/api/leave"}


def two_lesion_phantom(folder: Path) -> tuple[Path, Path, list[list[int]]]:
    """A small scan with two bright lesions on one axial slice, its label map (1 and 2) and their centres.

    Soft tissue at 40 HU with mild noise, 1 mm voxels (the network grid of :data:`PREPROCESSING`); the
    lesions are spheres of 110 and 100 HU. The centres are ``(d, h, w)`` on the network grid.
    """
    shape = (56, 64, 40)
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    labels = np.zeros(shape, np.uint8)
    image = 40 + 5 * np.random.default_rng(0).standard_normal(shape)
    for value, (centre, radius, hu) in enumerate(
        (((16, 24, 20), 6.0, 110.0), ((40, 38, 20), 7.0, 100.0)), start=1
    ):
        inside = ((index - np.array(centre)) ** 2).sum(-1) <= radius**2
        labels[inside] = value
        image[inside] = hu + 5 * np.random.default_rng(value).standard_normal(int(inside.sum()))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    scan_path, label_path = folder / "two_lesions.nii.gz", folder / "two_lesions_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.round(image).astype(np.int16), affine), scan_path)
    nib.save(nib.Nifti1Image(labels, affine), label_path)
    scan = load_scan(scan_path, PREPROCESSING)
    centres = [
        first_click(load_label(label_path, scan, (value,)).bool(), "center")[0][0].round().long().tolist()
        for value in (1, 2)
    ]
    return scan_path, label_path, centres
