"""`sam3d serve` against other web sites and other pages: Host, Origin, JSON only, page tokens, safe saving."""

from __future__ import annotations

import json

import httpx
import nibabel as nib
import numpy as np
import pytest
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
from serve_helpers import PREPROCESSING, MagicWand, Page, lesion_centre, live_server

from sam3d.errors import Sam3dError
from sam3d.serve.guard import ALLOWED_HOSTS_ENV, GuardMiddleware, server_names
from sam3d.serve.viewer import ViewSettings
from sam3d.session import Sam3dInferenceSession


@pytest.fixture(scope="module")
def phantom(synthetic_root):
    scan, label = (synthetic_root / part / "phantom_000.nii.gz" for part in ("imagesTr", "labelsTr"))
    centre, _ = lesion_centre(scan, label)
    return scan, label, centre


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1]


def test_a_host_name_not_of_this_server_is_refused_against_dns_rebinding(phantom, tmp_path):
    scan, _, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        port = _port(address)
        # a rebinding site's name resolving to 127.0.0.1: the browser names it in Host
        for path in ("/", "/api/config", "/api/volume"):
            status, content = page.request(path, headers={"Host": f"attacker.example:{port}"})
            assert status == 403, path
            assert "'attacker.example'" in json.loads(content)["error"]
        status, content = page.request(
            "/api/open", {"index": 0}, headers={"Host": f"attacker.example:{port}"}
        )
        assert status == 403
        assert page("/api/state") == {"scan": None}  # nothing was opened
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "app.localhost"):
            assert page.request("/api/config", headers={"Host": host})[0] == 200, host


def test_the_allowed_host_names_are_the_servers_own_and_those_given(monkeypatch):
    monkeypatch.delenv(ALLOWED_HOSTS_ENV, raising=False)
    guard = GuardMiddleware(None, server_names("Scanner.Local"))  # type: ignore[arg-type]
    assert guard.allows_host("scanner.local:8000")  # --host
    assert guard.allows_host("10.1.2.3:8000")
    assert guard.allows_host("[fe80::1]:80")
    assert not guard.allows_host("attacker.example")
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "seg.hospital.org, other.org")
    guard = GuardMiddleware(None, server_names())  # type: ignore[arg-type]
    assert guard.allows_host("seg.hospital.org")
    assert guard.allows_host("other.org:443")
    assert not guard.allows_host("attacker.example")


def test_requests_from_another_sites_page_are_refused(phantom, tmp_path):
    scan, _, centre = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        foreign = {"Origin": "http://attacker.example"}
        status, content = page.request("/api/open", {"index": 0}, headers=foreign)
        assert status == 403
        assert "requests from http://attacker.example are refused" in json.loads(content)["error"]
        assert page.request("/api/page", {}, headers=foreign)[0] == 403  # no token for it
        assert page.request("/claim", {}, headers=foreign)[0] == 403  # nor an nnInteractive lease
        assert page.request("/api/open", {"index": 0}, headers={"Origin": "null"})[0] == 403
        assert page.request("/api/open", {"index": 0}, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
        assert page("/api/state") == {"scan": None}
        # the page's own origin (a port is part of it) and a navigation to the page itself are fine
        assert (
            page.request("/api/open", {"index": 0}, headers={"Origin": f"http://localhost:{_port(address)}"})[
                0
            ]
            == 403
        )
        assert page.request("/api/open", {"index": 0}, headers={"Origin": address})[0] == 200
        assert page.request("/", headers={**foreign, "Sec-Fetch-Site": "cross-site"})[0] == 200
        status, _ = page.request("/api/volume", headers=foreign)
        assert status == 403
        page("/api/click", {"point": centre})
        status, _ = page.request("/api/save", headers=foreign)
        assert status == 403
        assert not (tmp_path / "out").exists()


def test_the_pages_posts_must_be_json_as_a_cross_site_form_cannot_send(phantom, tmp_path):
    scan, _, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, content = page.request("/api/open", {"index": 0}, headers={"Content-Type": kind})
            assert status == 415, kind
            assert "must send Content-Type: application/json" in json.loads(content)["error"]
        assert page("/api/state") == {"scan": None}
        status, content = page.request(
            "/api/upload?name=x.nii.gz", data=scan.read_bytes(), headers={"Content-Type": "text/plain"}
        )
        assert status == 415
        assert "application/octet-stream" in json.loads(content)["error"]
        headers = {"Content-Type": "application/json; charset=utf-8"}
        assert page.request("/api/open", {"index": 0}, headers=headers)[0] == 200


def test_a_page_needs_a_token_the_server_issued_in_a_header_never_in_the_url(phantom, tmp_path):
    scan, _, centre = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        page("/api/click", {"point": centre})
        made_up = Page(address, None)
        for token in ("page-one-0123456789", "0" * 32 + "." + "0" * 32, page.token.split(".")[0]):
            made_up.token = token
            assert "no valid page token" in made_up.error("/api/state")
            assert "no valid page token" in made_up.error("/api/open", {"index": 0})
        # in the query it is not taken (it would leak into history and logs)
        assert "no valid page token" in Page(address, None).error(f"/api/state?session={page.token}")
        assert "no valid page token" in Page(address, None).error(f"/api/state?page={page.token}")
        # a token the server knows is given back as it is (a reload keeps its scan); another gets a new one
        assert page("/api/page", {"page": page.token})["page"] == page.token
        fresh = page("/api/page", {"page": "0" * 32 + "." + "0" * 32})["page"]
        assert fresh != page.token
        assert fresh.count(".") == 1
        assert len(page("/api/state")["clicks"]) == 1


def _save(page: Page, centre: list[int]) -> dict[str, str]:
    page("/api/open", {"index": 0})
    page("/api/click", {"point": centre})
    files: dict[str, str] = page("/api/save")["files"]
    return files


def test_two_pages_saving_one_case_write_their_own_files(phantom, tmp_path):
    scan, _, centre = phantom
    output = tmp_path / "out"
    with live_server(MagicWand(), [scan], output) as address:
        first, second = Page(address, "first"), Page(address, "second")
        mine = _save(first, centre)
        assert mine["mask"].endswith("/phantom_000_mask.nii.gz")  # predict's name for the first page
        before = (output / "phantom_000_mask.nii.gz").read_bytes()
        second("/api/open", {"index": 0})
        second("/api/click", {"point": [centre[0], centre[1], centre[2] + 25]})  # outside the lesion
        theirs = second("/api/save")["files"]
        assert theirs["mask"].endswith("/phantom_000_page2_mask.nii.gz")
        assert theirs["interactions"].endswith("/phantom_000_page2_interactions.json")
        assert (output / "phantom_000_mask.nii.gz").read_bytes() == before
        assert first("/api/save")["files"] == mine  # the first page keeps its names
        assert second("/api/save")["files"] == theirs
        assert first.request("/api/download/mask")[1] == before


def test_save_replaces_a_symlink_in_the_output_folder_never_writes_through_it(phantom, tmp_path):
    scan, _, centre = phantom
    output = tmp_path / "out"
    output.mkdir()
    victims = {}
    for name in ("phantom_000_mask.nii.gz", "phantom_000_interactions.json"):
        victim = tmp_path / f"precious-{name}"
        victim.write_bytes(b"not to be overwritten")
        (output / name).symlink_to(victim)
        victims[name] = victim
    with live_server(MagicWand(), [scan], output) as address:
        files = _save(Page(address), centre)
    for name, victim in victims.items():
        assert victim.read_bytes() == b"not to be overwritten"
        assert not (output / name).is_symlink()
    assert np.asarray(nib.load(files["mask"]).dataobj).any()
    assert json.loads((output / "phantom_000_interactions.json").read_text())["scans"]
    assert sorted(p.name for p in output.iterdir()) == sorted(victims)  # no temporary file left


def test_a_reference_mode_checkpoint_refuses_negative_interactions_from_nninteractive_clients(
    phantom, tmp_path
):
    scan, label, _ = phantom
    image = nib.load(scan)
    data = np.asarray(image.dataobj)
    inside = np.argwhere(np.asarray(nib.load(label).dataobj) > 0)
    centre = [int(c) for c in inside.mean(0).round()]
    spacing = {"spacing": [float(z) for z in image.header.get_zooms()]}
    net = MagicWand(dense_prompts=("box", "scribble"))
    session = Sam3dInferenceSession(net, PREPROCESSING, click_mode="reference")  # type: ignore[arg-type]
    session.set_image(data[None], spacing)
    session.set_target_buffer(np.zeros(data.shape, np.uint8))
    session.add_point_interaction(centre, include_interaction=True)
    drawn = np.zeros(data.shape, np.uint8)
    drawn[centre[0], centre[1], centre[2] + 10] = 1
    for refused in (
        lambda: session.add_point_interaction(
            [centre[0], centre[1], centre[2] + 10], include_interaction=False
        ),
        lambda: session.add_scribble_interaction(drawn, include_interaction=False),
        lambda: session.add_lasso_interaction(drawn, include_interaction=False),
    ):
        with pytest.raises(Sam3dError, match="never learned negative clicks"):
            refused()
    assert len(session.session.interactions) == 1  # type: ignore[union-attr]
    session.add_scribble_interaction(drawn, include_interaction=True)  # positive ones go on

    with live_server(net, [], tmp_path / "out", view=ViewSettings(click_mode="reference")) as address:
        client = nnInteractiveRemoteInferenceSession(address)
        try:
            client.set_image(data[None], spacing)
            client.set_target_buffer(np.zeros(data.shape, np.uint8))
            client.add_point_interaction(centre, include_interaction=True)
            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.add_point_interaction(centre, include_interaction=False)
            assert refused.value.response.status_code == 400
            assert "never learned negative clicks" in refused.value.response.json()["detail"]
        finally:
            client.close()
