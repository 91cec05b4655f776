"""nnInteractive's remote protocol in `sam3d serve`, driven by the real `nninteractive-client` package."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from cli_helpers import SYNTHETIC_CONFIG
from nnInteractive.inference.remote import (
    ServerAtCapacityError,
    SessionExpiredError,
    nnInteractiveRemoteInferenceSession,
)
from nnInteractive.inference.remote.serialization import pack_array, unpack_array
from serve_helpers import PREPROCESSING, MagicWand, dice, live_server
from test_serve_cli import serving

from sam3d.errors import Sam3dError
from sam3d.serve import server
from sam3d.serve.packed_arrays import pack, unpack
from sam3d.serve.server import run
from sam3d.session import Sam3dInferenceSession


def _phantom(root: Path) -> tuple[nib.Nifti1Image, np.ndarray, tuple[int, int, int]]:
    image = nib.load(root / "imagesTr" / "phantom_000.nii.gz")
    label = np.asarray(nib.load(root / "labelsTr" / "phantom_000.nii.gz").dataobj) > 0
    centre = tuple(int(c) for c in np.argwhere(label).mean(0).round())
    return image, label, centre  # type: ignore[return-value]


def _spacing(image: nib.Nifti1Image) -> dict[str, list[float]]:
    return {"spacing": [float(z) for z in image.header.get_zooms()]}


def test_packed_arrays_read_and_write_what_the_client_writes_and_reads():
    rng = np.random.default_rng(0)
    arrays = [
        rng.normal(size=(1, 5, 6, 7)).astype(np.float32),
        rng.integers(-1000, 1000, size=(9, 3, 4)).astype(np.int16),
        rng.random((4, 4, 4)) > 0.5,
        (rng.random((30, 20, 10)) > 0.9).astype(np.uint8),
    ]
    for array in arrays:
        np.testing.assert_array_equal(unpack(pack_array(array), array.size), array)
        np.testing.assert_array_equal(unpack_array(pack(array)), array)
        assert unpack(pack_array(array), array.size).dtype == array.dtype
    with pytest.raises(Sam3dError, match=r"not a packed nnInteractive array .*expected magic NNIA"):
        unpack(b"PK\x03\x04" * 8, 100)
    with pytest.raises(Sam3dError, match="more than this server accepts"):
        unpack(pack_array(arrays[0]), arrays[0].size - 1)
    truncated = pack_array(arrays[0])[:-10]
    with pytest.raises(Sam3dError, match="not a packed nnInteractive array"):
        unpack(truncated, arrays[0].size)


def test_the_client_segments_a_phantom_with_points_boxes_scribbles_and_lassos(synthetic_root, tmp_path):
    image, label, centre = _phantom(synthetic_root)
    data = np.asarray(image.dataobj)
    lower, upper = np.argwhere(label).min(0), np.argwhere(label).max(0) + 1
    box = [[int(lower[0]), int(upper[0])], [int(lower[1]), int(upper[1])], [centre[2], centre[2] + 1]]
    net = MagicWand(dense_prompts=("box", "scribble"))
    local = Sam3dInferenceSession(net, PREPROCESSING)  # type: ignore[arg-type]
    local.set_image(data[None], _spacing(image))  # as the client sends it: the spacing alone
    with live_server(net, [], tmp_path / "out") as address:
        client = nnInteractiveRemoteInferenceSession(address)
        try:
            assert client.supported_interactions == {
                "point": True,
                "bbox": True,
                "scribble": True,
                "lasso": True,
                "initial_seg": False,
            }
            assert client.supports_undo
            client.set_image(data[None], _spacing(image))
            assert client.original_image_shape == (1, *data.shape)
            target = np.zeros(data.shape, np.uint8)
            client.set_target_buffer(target)

            changed = client.add_point_interaction(centre, include_interaction=True)
            local.add_point_interaction(centre)
            assert dice(target, label) > 0.8  # a wrong mapping (axes, spacing, origin) misses the lesion
            np.testing.assert_array_equal(
                target, local.target_buffer
            )  # the changed region pasted is the mask
            present = np.argwhere(target)  # it was empty: the changed region is the mask's bounding box
            assert changed == [
                [int(a), int(b) + 1] for a, b in zip(present.min(0), present.max(0), strict=True)
            ]

            client.reset_interactions()
            assert not target.any()
            client.add_bbox_interaction(box, include_interaction=True)
            assert dice(target, label) > 0.7
            boxed = target.copy()
            scribble = np.zeros(data.shape, np.uint8)
            scribble[upper[0] + 3, centre[1] - 2 : centre[1] + 3, centre[2]] = 1  # outside the lesion
            client.add_scribble_interaction(scribble, include_interaction=False)
            assert dice(target, label) > 0.7
            scribbled = target.copy()
            assert not np.array_equal(scribbled, boxed)  # the negative scribble trimmed the box's mask
            assert client.undo()
            np.testing.assert_array_equal(target, boxed)
            # The same scribble sent as the crop it lies in, placed by interaction_bbox.
            region = [
                [upper[0] + 3, upper[0] + 4],
                [centre[1] - 4, centre[1] + 4],
                [centre[2], centre[2] + 1],
            ]
            crop = scribble[tuple(slice(a, b) for a, b in region)]
            client.add_scribble_interaction(crop, include_interaction=False, interaction_bbox=region)
            np.testing.assert_array_equal(target, scribbled)
            assert client.undo()

            lasso = np.zeros(data.shape, np.uint8)
            lasso[box[0][0] : box[0][1], box[1][0] : box[1][1], centre[2]] = 1
            client.reset_interactions()
            client.add_lasso_interaction(lasso, include_interaction=True)  # the box around it
            np.testing.assert_array_equal(target, boxed)

            # Queued without a prediction, then predicted.
            client.reset_interactions()
            assert (
                client.add_point_interaction(centre, include_interaction=True, run_prediction=False) is None
            )
            assert not target.any()
            assert client._predict() is not None
            np.testing.assert_array_equal(target, local.target_buffer)

            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.add_bbox_interaction(box, include_interaction=False)
            assert refused.value.response.status_code == 400
            assert "no negative boxes" in refused.value.response.json()["detail"]
            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.add_point_interaction((500, 0, 0), include_interaction=True)
            assert "lies outside the image of shape (74, 65, 59)" in refused.value.response.json()["detail"]
            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.add_initial_seg_interaction(label.astype(np.uint8))
            assert "no initial segmentation" in refused.value.response.json()["detail"]
            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.set_image(data[None], {})
            assert "needs its geometry" in refused.value.response.json()["detail"]
        finally:
            client.close()


def test_a_network_without_boxes_refuses_them_and_clients_are_bounded(synthetic_root, tmp_path):
    image, _, _ = _phantom(synthetic_root)
    data = np.asarray(image.dataobj)
    with live_server(MagicWand(), [], tmp_path / "out", max_sessions=1) as address:
        first = nnInteractiveRemoteInferenceSession(address)
        assert first.supported_interactions["bbox"] is False
        first.set_image(data[None], _spacing(image))
        with pytest.raises(httpx.HTTPStatusError) as refused:
            first.add_bbox_interaction([[1, 5], [1, 5], [3, 4]], include_interaction=True)
        assert "takes no box prompts" in refused.value.response.json()["detail"]
        with pytest.raises(ServerAtCapacityError, match="--max_sessions 1"):
            nnInteractiveRemoteInferenceSession(address)
        first.close()  # releases its place
        nnInteractiveRemoteInferenceSession(address).close()
    with live_server(MagicWand(), [], tmp_path / "out", session_timeout_s=0) as address:
        expired = nnInteractiveRemoteInferenceSession(address)
        with pytest.raises(SessionExpiredError, match="connect again"):
            expired.set_image(data[None], _spacing(image))
        expired.close()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode(), response.headers.get("set-cookie") or ""
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), ""


def test_the_api_key_guards_the_protocol_and_the_page(synthetic_root, tmp_path):
    with live_server(MagicWand(), [], tmp_path / "out", api_key="s3cret-key") as address:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            nnInteractiveRemoteInferenceSession(address, api_key="wrong")
        assert refused.value.response.status_code == 401
        assert "needs its API key" in refused.value.response.json()["detail"]
        nnInteractiveRemoteInferenceSession(address, api_key="s3cret-key").close()
        status, body, _ = _get(address + "/")
        assert status == 401
        assert "/?api_key=KEY" in body
        assert _get(address + "/api/config")[0] == 401
        status, body, cookie = _get(address + "/?api_key=s3cret-key")
        assert status == 200
        assert "<html" in body.lower()
        assert "sam3d_api_key=s3cret-key" in cookie
        assert _get(address + "/api/config", {"Cookie": "sam3d_api_key=s3cret-key"})[0] == 200
        assert _get(address + "/api/config", {"Authorization": "Bearer s3cret-key"})[0] == 200
        assert _get(address + "/api/config", {"Authorization": "Bearer s3cret"})[0] == 401
    with live_server(MagicWand(), [], tmp_path / "out") as address:  # without a key: open, as before
        assert _get(address + "/api/config")[0] == 200


def test_sharing_beyond_this_machine_with_a_key_does_not_warn(monkeypatch, capsys):
    loopback = server.bind
    monkeypatch.setattr(server, "bind", lambda host, port: loopback("127.0.0.1", 0))
    monkeypatch.setattr(server.uvicorn.Server, "run", lambda self, sockets: sockets[0].close())
    run(object(), host="0.0.0.0", port=0)  # type: ignore[arg-type]
    assert "--api_key or SAM3D_API_KEY" in capsys.readouterr().err
    run(object(), host="0.0.0.0", port=0, api_key=True)  # type: ignore[arg-type]
    assert "WARNING" not in capsys.readouterr().err


def test_sam3d_serve_segments_a_phantom_for_the_nninteractive_client(synthetic_root, trained, tmp_path):
    _, checkpoint = trained
    image, _, centre = _phantom(synthetic_root)
    data = np.asarray(image.dataobj)
    arguments = [
        *("--config", str(SYNTHETIC_CONFIG), "--ckpt_path", str(checkpoint)),
        *("--prediction.output_dir", str(tmp_path / "out")),
    ]
    with serving(arguments, tmp_path, {"SAM3D_API_KEY": "phantom-key"}) as (address, log):
        with pytest.raises(httpx.HTTPStatusError):  # the key of the environment variable is needed
            nnInteractiveRemoteInferenceSession(address, api_key="")
        client = nnInteractiveRemoteInferenceSession(address, api_key="phantom-key")
        client.set_image(data[None], {"affine": image.affine.tolist()})
        target = np.zeros(data.shape, np.uint8)
        client.set_target_buffer(target)
        client.add_point_interaction(centre, include_interaction=True)
        client.close()
        log.wait_for(r"nnInteractive client \S+: positive point \[\d+, \d+, \d+\]: \d+\.\d+ s")
    # What the checkpoint's network gives in this process, on the same raw scan, for the same point.
    local = Sam3dInferenceSession.from_checkpoint(checkpoint)
    local.set_image(data[None], {"affine": image.affine})
    local.add_point_interaction(centre)
    np.testing.assert_array_equal(target, local.target_buffer)
    assert set(np.unique(target)) <= {0, 1}
