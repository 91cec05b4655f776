"""`sam3d serve`'s application without a browser: clicks, boxes, scribbles, saving, replaying and every bad input."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import tempfile
import urllib.request

import nibabel as nib
import numpy as np
import pytest
import torch
from serve_helpers import (
    PREPROCESSING,
    MagicWand,
    Page,
    dice,
    lesion_centre,
    live_server,
    replay,
    write_reoriented,
)

from sam3d.data.scans import (
    SkippedCase,
    interactions_to_network,
    load_scan,
    match_clicks,
    read_clicks,
    write_prediction,
)
from sam3d.errors import Sam3dError
from sam3d.serve import ScanView, ViewSettings, open_scan
from sam3d.serve.server import bind, is_loopback
from sam3d.serve.viewer import OutputFolder


@pytest.fixture(scope="module")
def phantom(synthetic_root):
    """The first phantom: scan, label and its lesion's deepest voxel on the network grid."""
    scan, label = (synthetic_root / part / "phantom_000.nii.gz" for part in ("imagesTr", "labelsTr"))
    centre, _ = lesion_centre(scan, label)
    return scan, label, centre


def test_click_save_correct_undo_and_replay_the_clicks(phantom, tmp_path, caplog):
    scan, label, centre = phantom
    output = tmp_path / "out"
    with live_server(MagicWand(), [scan], output) as address, caplog.at_level(logging.INFO, "sam3d.serve"):
        page = Page(address)
        opened = page("/api/open", {"index": 0})
        assert opened["scan"]["name"] == scan.name
        assert opened["clicks"] == []
        assert opened["mask"] is None
        assert "".join(nib.aff2axcodes(nib.load(scan).affine)) in opened["scan"]["source"]
        _status, volume = page.request("/api/volume")
        shape = opened["scan"]["shape"]
        intensities = np.frombuffer(volume, np.int16).reshape(shape) * opened["scan"]["scale"]
        np.testing.assert_allclose(  # the page shows the scan's own intensities (HU) on the network grid
            intensities + opened["scan"]["offset"], load_scan(scan, PREPROCESSING, True).intensities.numpy()
        )

        first = page("/api/click", {"point": centre, "positive": True})
        assert first["crop"] == {"start": [c - 32 for c in centre], "size": [64, 64, 64]}
        saved = page("/api/save")
        mask_file = output / "phantom_000_mask.nii.gz"
        assert saved["files"]["mask"] == str(mask_file)
        mask, truth = nib.load(mask_file), nib.load(label)
        assert mask.shape == truth.shape
        np.testing.assert_allclose(mask.affine, truth.affine)
        assert dice(np.asarray(mask.dataobj), np.asarray(truth.dataobj)) > 0.7
        assert saved["volume_ml"] == pytest.approx(first["volume_ml"], rel=0.1)
        assert page.request("/api/download/mask")[1] == mask_file.read_bytes()

        edge = [centre[0], centre[1], centre[2] + 3]
        second = page("/api/click", {"point": edge, "positive": False})
        assert [c["positive"] for c in second["clicks"]] == [True, False]
        assert first["volume_ml"] > second["volume_ml"] > 0
        undone = page("/api/undo")
        assert {**undone, "seconds": None} == {**first, "seconds": None}
        page("/api/click", {"point": edge, "positive": False})

        # the interactions file, as `sam3d predict` reads it, gives back the page's clicks, one step each
        interactions = page.request("/api/download/interactions")[1].decode()
        (tmp_path / "replay.json").write_text(interactions)
        matched, problems = match_clicks(read_clicks(tmp_path / "replay.json"), [scan])
        assert not problems
        steps = interactions_to_network(matched[scan], load_scan(scan, PREPROCESSING))
        assert [[(i.kind, i.positive) for i in step] for step in steps] == [
            [("click", True)],
            [("click", False)],
        ]
        points = torch.cat([step[0].voxels for step in steps])
        np.testing.assert_allclose(points.numpy(), [centre, edge], atol=1e-3)
        saved = page("/api/save")
        assert set(saved["files"]) == {"mask", "interactions"}
        assert (output / "phantom_000_interactions.json").read_text() == interactions
        assert not (output / "phantom_000_clicks.csv").exists()

        reset = page("/api/reset")
        assert reset["clicks"] == []
        assert reset["mask"] is None
        assert reset["crop"] is None
    assert "click 1 (positive)" in caplog.text
    assert "crop encoded" in caplog.text
    assert "click 2 (negative)" in caplog.text
    assert "crop encoding reused" in caplog.text


def test_the_mask_follows_the_object_beyond_the_first_crop_by_default(phantom, tmp_path):
    scan, _, centre = phantom
    results = {}
    for protocol, settings in (("paper", ViewSettings(protocol="paper")), ("default", ViewSettings())):
        with live_server(MagicWand(crop_size=(16, 16, 16)), [scan], tmp_path, view=settings) as address:
            page = Page(address)
            page("/api/open", {"index": 0})
            results[protocol] = page("/api/click", {"point": centre})
    assert results["default"]["crop"] == results["paper"]["crop"]  # the outline: the crop the click placed
    # by default the mask grows beyond the first crop: a lesion larger than 16^3 mm is covered
    assert results["default"]["volume_ml"] > 1.5 * results["paper"]["volume_ml"]


def test_scan_of_another_orientation_and_spacing_is_saved_in_its_own_geometry(phantom, tmp_path):
    scan, label, _ = phantom
    upload = write_reoriented(scan, tmp_path / "turned.nii.gz")
    turned_label = write_reoriented(label, tmp_path / "turned_label.nii.gz")
    assert nib.aff2axcodes(upload.affine) != nib.aff2axcodes(nib.load(scan).affine)
    centre, _ = lesion_centre(tmp_path / "turned.nii.gz", tmp_path / "turned_label.nii.gz")
    with live_server(MagicWand(), [], tmp_path / "out") as address:
        page = Page(address)
        opened = page("/api/upload?name=turned.nii.gz", data=(tmp_path / "turned.nii.gz").read_bytes())
        assert opened["scan"]["name"] == "turned.nii.gz (uploaded)"
        assert "".join(nib.aff2axcodes(upload.affine)) in opened["scan"]["source"]
        assert "network's grid" in opened["scan"]["note"]
        page("/api/click", {"point": centre})
        page("/api/save")
    mask = nib.load(tmp_path / "out" / "turned_mask.nii.gz")
    assert mask.shape == turned_label.shape
    np.testing.assert_allclose(mask.affine, turned_label.affine)
    assert dice(np.asarray(mask.dataobj), np.asarray(turned_label.dataobj)) > 0.7


def test_bad_inputs_get_a_message_and_the_server_keeps_serving(phantom, tmp_path):
    scan, _, centre = phantom
    with live_server(
        MagicWand(), [scan], tmp_path / "out", view=ViewSettings(max_voxels=2_000_000)
    ) as address:
        page = Page(address)
        assert "no scan is open" in page.error("/api/click", {"point": centre})
        page("/api/open", {"index": 0})
        assert "not a scan file" in page.error("/api/upload?name=notes.txt", data=b"hello")
        assert "unreadable" in page.error("/api/upload?name=fake.nii.gz", data=b"this is not a NIfTI file")
        big = nib.Nifti1Image(np.zeros((160, 160, 100), np.int16), np.diag([1.0, 1.0, 1.0, 1]))
        message = page.error("/api/upload?name=big.nii.gz", data=big.to_bytes())
        assert "too large" in message
        assert "2.6M" in message
        assert "--max_voxels" in message
        flat = nib.Nifti1Image(np.zeros((30, 30, 30), np.int16), np.diag([1.0, 1.0, 50.0, 1]))
        assert "absurd voxel spacing" in page.error("/api/upload?name=flat.nii.gz", data=flat.to_bytes())
        assert "no listed scan number 3" in page.error("/api/open", {"index": 3})
        assert page("/api/state")["scan"]["name"] == scan.name  # a refused scan leaves the open one open

        message = page.error("/api/click", {"point": centre, "positive": False})
        assert "first interaction must be positive" in message
        assert "nothing to save yet" in page.error("/api/save")
        assert "press Save first" in page.error("/api/download/mask")
        message = page.error("/api/click", {"point": [-3, 10, 10]})
        assert message.startswith(
            "the click at axial slice -2, coronal slice 11, sagittal slice 11 is outside the image"
        )
        assert "three numbers" in page.error("/api/click", {"point": [1, 2]})
        assert "not valid JSON" in page.error("/api/click", data=b"{")
        assert "no valid page token" in Page(address, None).error("/api/state")
        # after all that, the page's scan is intact and clicks work
        state = page("/api/click", {"point": centre})
        assert len(state["clicks"]) == 1
        assert state["mask"] is not None


def test_an_unexpected_error_answers_500_and_the_server_goes_on(phantom, tmp_path, monkeypatch):
    scan, _, centre = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        monkeypatch.setattr(MagicWand, "segment", lambda *args: 1 / 0)
        status, content = page.request("/api/click", {"point": centre})
        assert status == 500
        assert b"ZeroDivisionError" in content
        assert b"server log" in content
        monkeypatch.undo()
        first = page("/api/click", {"point": centre})
        assert len(first["clicks"]) == 1
        # a failed second interaction is taken back, and only it: the first click and its mask stay
        monkeypatch.setattr(MagicWand, "segment", lambda *args: 1 / 0)
        assert page.request("/api/click", {"point": [centre[0], centre[1], centre[2] + 3]})[0] == 500
        monkeypatch.undo()
        assert {**page("/api/state"), "seconds": None} == {**first, "seconds": None}


def test_two_pages_keep_their_own_clicks_and_a_full_server_says_so(phantom, tmp_path):
    scan, _, centre = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out", max_sessions=2) as address:
        first, second, third = Page(address, "first"), Page(address, "second"), Page(address, "third")
        first("/api/open", {"index": 0})
        second("/api/open", {"index": 0})
        first("/api/click", {"point": centre})
        assert second("/api/state")["clicks"] == []
        assert len(first("/api/state")["clicks"]) == 1
        assert third("/api/state") == {"scan": None}  # looking costs nothing
        message = third.error("/api/open", {"index": 0})
        assert "scans open in 2 other page(s)" in message
        assert "--max_sessions" in message
        assert len(first("/api/state")["clicks"]) == 1

        second.request("/api/leave", data=b"")  # its tab was closed
        third("/api/open", {"index": 0})
        assert second("/api/state") == {"scan": None}
        assert len(first("/api/state")["clicks"]) == 1
    with live_server(MagicWand(), [scan], tmp_path / "out", max_sessions=1, session_timeout_s=0) as address:
        first = Page(address, "first")
        first("/api/open", {"index": 0})
        Page(address, "second")("/api/open", {"index": 0})  # the idle page gives its place
        assert first("/api/state") == {"scan": None}


def test_host_and_port_problems_are_explained():
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.10")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(Sam3dError, match="another --port"):
            bind("127.0.0.1", taken.getsockname()[1])


def test_save_writes_the_probability_map_when_asked(phantom, tmp_path):
    scan, _, centre = phantom
    output = OutputFolder(tmp_path / "out", probabilities=True)
    view = ScanView(MagicWand(), open_scan(scan, PREPROCESSING, 2**28), ViewSettings(), output)
    view.click(tuple(centre), positive=True)
    saved = view.save()
    assert set(saved["files"]) == {"mask", "interactions", "probability"}
    mask, probability = (nib.load(saved["files"][kind]) for kind in ("mask", "probability"))
    assert mask.shape == probability.shape == nib.load(scan).shape
    assert np.array_equal(np.asarray(mask.dataobj).astype(bool), probability.get_fdata() > 0.5)
    assert saved["volume_ml"] > 0


def test_serve_writes_its_files_without_the_lightning_callbacks():
    # `serve` and `predict` share the plain writing function, not the `predict` callback.
    code = "import sys, sam3d.serve, sam3d.serve.command; print('sam3d.callbacks' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_boxes_and_scribbles_segment_undo_save_andreplay(phantom, tmp_path, caplog):
    scan, label, centre = phantom
    output = tmp_path / "out"
    net = MagicWand(dense_prompts=("box", "scribble"))
    with live_server(net, [scan], output) as address, caplog.at_level(logging.INFO, "sam3d.serve"):
        page = Page(address)
        page("/api/open", {"index": 0})
        assert page("/api/config")["prompts"] == ["click", "box", "scribble"]
        # a 2D box on the centre's coronal slice (h fixed), corners given in any order
        lower, upper = [centre[0] + 3, centre[1], centre[2] - 3], [centre[0] - 3, centre[1], centre[2] + 3]
        boxed = page("/api/box", {"lower": lower, "upper": upper})
        low, high = [centre[0] - 3, centre[1], centre[2] - 3], [centre[0] + 3, centre[1], centre[2] + 3]
        assert boxed["interactions"] == [{"kind": "box", "voxels": [low, high], "positive": True}]
        assert boxed["clicks"] == []
        assert boxed["crop"]["start"] == [c - 32 for c in centre]  # centred on the box
        truth = load_scan(scan, PREPROCESSING)
        lesion = np.asarray(nib.load(label).dataobj)
        assert boxed["volume_ml"] > 0
        stroke = [[centre[0], centre[1] + 6, w] for w in range(centre[2] - 2, centre[2] + 3)]
        scribbled = page("/api/scribble", {"voxels": stroke, "positive": False})
        assert [i["kind"] for i in scribbled["interactions"]] == ["box", "scribble"]
        assert scribbled["interactions"][1]["positive"] is False
        assert scribbled["interactions"][1]["voxels"] == stroke
        assert 0 < scribbled["volume_ml"] < boxed["volume_ml"]
        assert {**page("/api/undo"), "seconds": None} == {**boxed, "seconds": None}
        page("/api/scribble", {"voxels": stroke, "positive": False})
        page("/api/click", {"point": [centre[0], centre[1] + 1, centre[2]]})
        last = page("/api/state")
        saved = page("/api/save")
        assert set(saved["files"]) == {"mask", "interactions"}
        mask = np.asarray(nib.load(saved["files"]["mask"]).dataobj)
        assert dice(mask, lesion) > 0.3

    # `sam3d predict` reads the saved file back to the same interactions on the grid, in the same steps
    interactions_file = output / "phantom_000_interactions.json"
    case, prediction = replay(net, [scan], interactions_file)
    assert [[i.kind for i in step] for step in case.steps] == [["box"], ["scribble"], ["click"]]
    for step, shown in zip(case.steps, last["interactions"], strict=True):
        assert step[0].positive == shown["positive"]
        np.testing.assert_allclose(step[0].voxels.numpy(), shown["voxels"], atol=1e-4)
    assert case.steps[0][0].voxels.tolist() == boxed["interactions"][0]["voxels"]  # exact after rounding
    assert case.steps[1][0].voxels.tolist() == stroke
    # and replaying them gives the page's mask
    replayed = write_prediction(truth, prediction["probability"], 0.5, tmp_path / "replayed", False)
    np.testing.assert_array_equal(np.asarray(nib.load(replayed.mask).dataobj), mask)
    assert "box (" in caplog.text
    assert "negative scribble through 5 voxel(s)" in caplog.text
    assert "undo, 1 interaction(s) left" in caplog.text


def test_predict_skips_a_scan_whose_boxes_the_network_does_not_take(phantom, tmp_path):
    scan, _, centre = phantom
    world = load_scan(scan, PREPROCESSING).affine @ np.array([*centre[::-1], 1.0])
    content = {
        "scans": [
            {
                "scan": scan.name,
                "interactions": [{"type": "box", "corners": [world[:3].tolist()] * 2, "space": "world"}],
            }
        ]
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(content))
    _, prediction = replay(MagicWand(), [scan], path)
    skipped = prediction["case"]
    assert isinstance(skipped, SkippedCase)
    assert "probability" not in prediction
    assert str(path) in skipped.reason
    assert str(scan) in skipped.reason
    assert "takes no box prompts" in skipped.reason
    assert "model.dense_prompts" in skipped.reason
    assert "configs/prompts/box.yaml" in skipped.reason
    _, taken = replay(MagicWand(dense_prompts=("box",)), [scan], path)
    assert taken["probability"].sum() > 0


def test_bad_box_and_scribble_bodies_are_refused_and_the_server_goes_on(phantom, tmp_path):
    scan, _, centre = phantom
    with live_server(MagicWand(dense_prompts=("box", "scribble")), [scan], tmp_path / "out") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        assert "lower and upper" in page.error("/api/box", {"lower": centre})
        assert "lower and upper" in page.error("/api/box", {"lower": [1, 2], "upper": centre})
        assert "lower and upper" in page.error("/api/box", {"lower": [1, 2, "x"], "upper": centre})
        assert "non-empty list" in page.error("/api/scribble", {"voxels": []})
        assert "non-empty list" in page.error("/api/scribble", {"voxels": centre})
        assert "non-empty list" in page.error("/api/scribble", {"voxels": [centre, [1, True, 3]]})
        assert "at most 65536 voxels" in page.error("/api/scribble", {"voxels": [centre] * 70000})
        assert "true or false" in page.error("/api/scribble", {"voxels": [centre], "positive": "no"})
        assert "first interaction must be positive" in page.error(
            "/api/scribble", {"voxels": [centre], "positive": False}
        )
        assert "the box at axial slice -1, " in page.error("/api/box", {"lower": [-2, 3, 3], "upper": centre})
        assert "not valid JSON" in page.error("/api/box", data=b"[")
        assert page("/api/state")["interactions"] == []
        assert len(page("/api/box", {"lower": centre, "upper": centre})["interactions"]) == 1
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        assert page("/api/config")["prompts"] == ["click"]
        message = page.error("/api/box", {"lower": centre, "upper": centre})
        assert "takes no box prompts" in message
        assert "click instead" in message
        assert "takes no scribble prompts" in page.error("/api/scribble", {"voxels": [centre]})
        assert page("/api/click", {"point": centre})["mask"] is not None


def test_uploads_that_name_other_files_or_pass_the_size_limit_and_nan_points_are_refused(phantom, tmp_path):
    import SimpleITK as sitk

    scan, _, centre = phantom
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(256)) * 8)  # what a header could make the server read and show
    metaimage = (
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 8\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {secret}\n"
    )
    nrrd = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 8\nencoding: raw\ndata file: {secret}\n\n"
    sitk.WriteImage(sitk.ReadImage(str(scan)), str(tmp_path / "whole.mha"))
    with live_server(
        MagicWand(), [scan], tmp_path / "out", view=ViewSettings(max_voxels=2_000_000)
    ) as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        for name, header in (("evil.mha", metaimage), ("evil.mhd", metaimage), ("evil.nrrd", nrrd)):
            message = page.error(f"/api/upload?name={name}", data=header.encode())
            assert "separate file" in message
            assert str(secret) in message
            assert page("/api/state")["scan"]["name"] == scan.name  # nothing of the secret was opened
        assert page("/api/upload?name=whole.mha", data=(tmp_path / "whole.mha").read_bytes())["scan"]

        status, content = page.request("/api/click", data=b'{"point": [NaN, 10, 10]}')
        assert status == 400
        assert "finite" in json.loads(content)["error"]
        status, content = page.request("/api/click", data=b'{"point": [10, Infinity, 10]}')
        assert status == 400
        assert "finite" in json.loads(content)["error"]
        page("/api/click", {"point": centre})


def test_a_case_name_beyond_latin_1_downloads_its_interactions(phantom, tmp_path):
    scan, _, centre = phantom
    renamed = tmp_path / "größe_肝.nii.gz"
    renamed.write_bytes(scan.read_bytes())
    with live_server(MagicWand(), [renamed], tmp_path / "out") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        page("/api/click", {"point": centre})
        request = urllib.request.Request(
            f"{address}/api/download/interactions", headers={"X-Sam3d-Page": page.token}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            disposition = response.headers["Content-Disposition"]
            assert json.loads(response.read())["scans"][0]["scan"] == renamed.name
    assert "filename*=utf-8''gr%C3%B6%C3%9Fe_%E8%82%9D_interactions.json" in disposition


def test_a_body_without_content_length_is_cut_at_the_limit_not_read_whole():
    import asyncio

    from starlette.requests import Request

    from sam3d.serve.bodies import limited_body

    sent = []

    async def receive() -> dict[str, object]:
        sent.append(1)
        return {"type": "http.request", "body": bytes(1 << 20), "more_body": len(sent) < 64}

    chunked = Request(
        {"type": "http", "method": "POST", "headers": [(b"transfer-encoding", b"chunked")]}, receive
    )
    with pytest.raises(
        Sam3dError, match=r"scan.nii is over 9 MiB, more than this server accepts \(9 MiB\), raise"
    ):
        asyncio.run(limited_body(chunked, 9 << 20, "scan.nii", ", raise --max_voxels"))
    assert len(sent) == 10  # refused at the first chunk past the limit, 54 MiB never read
    declared = Request(
        {"type": "http", "method": "POST", "headers": [(b"content-length", b"99999999")]}, receive
    )
    with pytest.raises(Sam3dError, match="is 95 MiB, more than"):
        asyncio.run(limited_body(declared, 9 << 20, "scan.nii"))
    assert len(sent) == 10  # refused on its Content-Length, before reading


def test_a_reference_mode_checkpoint_refuses_negative_clicks_and_says_why(phantom, tmp_path):
    scan, _, centre = phantom
    with live_server(
        MagicWand(), [scan], tmp_path / "out", view=ViewSettings(click_mode="reference")
    ) as address:
        page = Page(address)
        assert page("/api/config")["click_mode"] == "reference"
        page("/api/open", {"index": 0})
        first = page("/api/click", {"point": centre})
        beside = [centre[0], centre[1], centre[2] + 3]
        message = page.error("/api/click", {"point": beside, "positive": False})
        assert "trained with data.click_mode reference" in message
        assert "never learned negative clicks" in message
        assert "clicks/interactive.yaml" in message
        assert "negative scribble would grow" in page.error(
            "/api/scribble", {"voxels": [beside], "positive": False}
        )
        state = page("/api/state")
        assert state["clicks"] == first["clicks"]  # nothing was added
        assert state["mask"] == first["mask"]
        assert len(page("/api/click", {"point": beside})["clicks"]) == 2  # positive clicks go on
    with live_server(
        MagicWand(), [scan], tmp_path / "out", view=ViewSettings(click_mode="labelled")
    ) as address:
        page = Page(address)
        assert page("/api/config")["click_mode"] == "labelled"
        page("/api/open", {"index": 0})
        page("/api/click", {"point": centre})
        assert len(page("/api/click", {"point": beside, "positive": False})["clicks"]) == 2


def test_upload_errors_name_the_file_never_the_servers_folder(phantom, tmp_path):
    scan, _, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        for name, data in (
            ("broken.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 9 9 9\nencoding: raw\n\n\0\0"),
            ("broken.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 9 9 9\nElementType = MET_SHORT\n"),
            ("fake.nii.gz", b"this is not a NIfTI file"),
        ):
            message = page.error(f"/api/upload?name={name}", data=data)
            assert name in message
            assert "sam3d-serve-" not in message  # the uploads' folder
            assert tempfile.gettempdir() not in message, message
