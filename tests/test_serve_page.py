"""`sam3d serve`'s page in a real headless Chromium: click, drag boxes and scribbles, see the overlay, correct,
save and replay; bad inputs on the page.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped without them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage
from serve_helpers import MagicWand, dice, lesion_centre, live_server, replay, two_lesion_phantom

from sam3d.data.scans import write_prediction
from sam3d.serve import ViewSettings

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is a dev extra: pip install -e '.[dev]'"
)
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Root in a container needs --no-sandbox; the rest keeps Chromium from reaching out to the network.
ARGUMENTS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,1000",
]


@pytest.fixture
def browsers(tmp_path):
    """Opens headless Chromium browsers (each with its own fresh profile); closes them after the test."""
    driver_path = shutil.which("chromedriver")
    binary = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if driver_path is None or binary is None:
        pytest.skip("no headless Chromium: install Debian's chromium and chromium-driver (.ci/run does)")
    opened = []

    def open_browser():
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for argument in (*ARGUMENTS, f"--user-data-dir={tmp_path / f'chromium-{len(opened)}'}"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
        opened.append(driver)
        metrics = {"width": 780, "height": 950, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the whole page on screenshots
        return driver

    yield open_browser
    for driver in opened:
        driver.quit()


@pytest.fixture(scope="module")
def phantom(synthetic_root):
    """The first phantom: scan, label, its lesion's deepest voxel on the network grid, its lesion's RAS x."""
    scan, label = (synthetic_root / part / "phantom_000.nii.gz" for part in ("imagesTr", "labelsTr"))
    centre, _ = lesion_centre(scan, label)
    info = json.loads((synthetic_root / "dataset.json").read_text())["phantoms"]["phantom_000"]
    return scan, label, centre, info["lesion_centre_mm"][0]


def _wait(driver, script, timeout=60):
    """Wait until the page's JavaScript expression ``script`` is true; return its value."""
    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {script}"))


def _open(driver, address, index=0):
    """Load the page, which opens the first listed scan itself; open the ``index``-th scan if another."""
    driver.get(address)
    _wait(driver, "document.body.dataset.ready === '1'")
    if index:
        driver.execute_script(f"document.getElementById('scans').selectedIndex = {index}")
        driver.find_element(By.ID, "open").click()
    _wait(
        driver,
        f"window.sam3d.state.volume !== null && document.getElementById('scans').selectedIndex === {index}",
    )


def _dataset(driver, key):
    return driver.execute_script(f"return document.body.dataset.{key}")


def _click(driver, view, point, negative=False):
    """Scroll ``view`` to the point's slice with its slider, then click the point with the mouse."""
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
    driver.execute_script(
        "const slider = document.getElementById(arguments[0] + '-slice');"
        "slider.value = arguments[1]; slider.dispatchEvent(new Event('input'));",
        view,
        point[axis],
    )
    at = driver.execute_script("return window.sam3d.screenPoint(arguments[0], arguments[1])", view, point)
    canvas = driver.find_element(By.ID, view)
    size = canvas.size
    actions = ActionChains(driver).move_to_element_with_offset(
        canvas, round(at["x"] - size["width"] / 2), round(at["y"] - size["height"] / 2)
    )
    (actions.context_click() if negative else actions.click()).perform()


def _drag(driver, view, start, end, keys=()):
    """Press on voxel ``start`` of ``view`` (on the slice shown), move to voxel ``end``, release; ``keys`` held."""
    canvas = driver.find_element(By.ID, view)
    size = canvas.size
    at = [
        driver.execute_script("return window.sam3d.screenPoint(arguments[0], arguments[1])", view, p)
        for p in (start, end)
    ]
    actions = ActionChains(driver)
    for key in keys:
        actions.key_down(key)
    actions.move_to_element_with_offset(
        canvas, round(at[0]["x"] - size["width"] / 2), round(at[0]["y"] - size["height"] / 2)
    ).click_and_hold()
    actions.move_by_offset(round(at[1]["x"] - at[0]["x"]), round(at[1]["y"] - at[0]["y"])).release()
    for key in keys:
        actions.key_up(key)
    actions.perform()


def _result(driver):
    return driver.execute_script("return window.sam3d.state.result")


def _pixels(driver, view):
    """The view's canvas as an ``(H, W, 4)`` RGBA array."""
    width, height, data = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        view,
    )
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)


def _red(pixels):
    """Where the mask overlay is drawn (red over grey)."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (r > g + 60) & (r > b + 60)


def _colour(pixels, rgb):
    """Where ``rgb`` is drawn exactly (the interactions' outlines and voxels)."""
    return (pixels[..., :3] == rgb).all(-1)


def _message(driver):
    return driver.find_element(By.ID, "message").text


def test_click_in_the_lesion_see_the_mask_correct_it_and_save_it(browsers, phantom, tmp_path):
    scan, label, centre, lesion_x_mm = phantom
    output = tmp_path / "out"
    with live_server(MagicWand(), [scan], output) as address:
        driver = browsers()
        _open(driver, address)
        assert not _red(_pixels(driver, "axial")).any()

        _click(driver, "axial", centre)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
        axial = _pixels(driver, "axial")
        overlay = _red(axial)
        assert overlay.sum() > 50
        # radiological display: the patient's right (RAS x > 0) on the left; the spine (white) posterior, below
        assert (np.nonzero(overlay)[1].mean() < axial.shape[1] / 2) == (lesion_x_mm > 0)
        white = axial[..., :3].min(-1) == 255
        assert white[axial.shape[0] // 2 :].sum() > 10 * white[: axial.shape[0] // 2].sum()
        assert "1 click(s) (1+, 0−)" in driver.find_element(By.ID, "status").text

        driver.find_element(By.ID, "save").click()
        saved = _wait(driver, "document.body.dataset.saved")
        mask, truth = nib.load(saved), nib.load(label)
        assert mask.shape == truth.shape
        np.testing.assert_allclose(mask.affine, truth.affine)
        assert dice(np.asarray(mask.dataobj), np.asarray(truth.dataobj)) > 0.7
        assert "mL on the scan's grid" in _message(driver)

        first = int(_dataset(driver, "maskVoxels"))
        _click(driver, "axial", [centre[0], centre[1], centre[2] - 4], negative=True)
        _wait(driver, "document.body.dataset.clicks === '2'")
        assert 0 < int(_dataset(driver, "maskVoxels")) < first
        assert _red(_pixels(driver, "axial")).sum() < overlay.sum()
        assert "2 click(s) (1+, 1−)" in driver.find_element(By.ID, "status").text

        screenshot = tmp_path / "sam3d-serve.png"
        driver.save_screenshot(str(screenshot))
        print(f"screenshot of the page: {screenshot}")

        driver.find_element(By.ID, "undo").click()
        _wait(driver, "document.body.dataset.clicks === '1'")
        assert int(_dataset(driver, "maskVoxels")) == first


def _outside_point(driver, centre):
    """A view and a voxel just outside the volume that the view shows in its margin (the canvas's letterbox)."""
    for view, axes in (("axial", (1, 2)), ("coronal", (0, 2)), ("sagittal", (0, 1))):
        for axis in axes:
            point = list(centre)
            point[axis] = -3
            at = driver.execute_script(
                "return window.sam3d.screenPoint(arguments[0], arguments[1])", view, point
            )
            size = driver.find_element(By.ID, view).size
            if 0 <= at["x"] < size["width"] and 0 <= at["y"] < size["height"]:
                return view, point
    raise AssertionError("every view fills its canvas")


def test_bad_inputs_show_on_the_page_which_keeps_working(browsers, phantom, tmp_path):
    scan, _, centre, _ = phantom
    (tmp_path / "notes.txt").write_text("not a scan")
    nib.save(nib.Nifti1Image(np.zeros((160, 160, 100), np.int16), np.eye(4)), tmp_path / "big.nii.gz")
    with live_server(
        MagicWand(), [scan], tmp_path / "out", view=ViewSettings(max_voxels=2_000_000)
    ) as address:
        driver = browsers()
        _open(driver, address)
        upload = driver.find_element(By.ID, "upload")
        upload.send_keys(str(tmp_path / "notes.txt"))
        _wait(driver, "document.getElementById('message').textContent.includes('not a scan file')")
        upload.send_keys(str(tmp_path / "big.nii.gz"))
        _wait(driver, "document.getElementById('message').textContent.includes('too large')")
        assert "--max_voxels" in _message(driver)

        view, outside = _outside_point(driver, centre)
        driver.execute_script(  # _click scrolls to the point's slice, which is outside too: stay on the centre's
            "window.sam3d.state.cursor = arguments[0];", centre
        )
        at = driver.execute_script(
            "return window.sam3d.screenPoint(arguments[0], arguments[1])", view, outside
        )
        canvas = driver.find_element(By.ID, view)
        ActionChains(driver).move_to_element_with_offset(
            canvas, round(at["x"] - canvas.size["width"] / 2), round(at["y"] - canvas.size["height"] / 2)
        ).click().perform()
        _wait(driver, "document.getElementById('message').textContent.includes('is outside the image')")
        slice_number = centre[{"axial": 0, "coronal": 1, "sagittal": 2}[view]] + 1
        assert f"the click at {view} slice {slice_number}, row " in _message(driver)
        assert "(d, h, w)" not in _message(driver)
        assert _dataset(driver, "clicks") == "0"

        _click(driver, "axial", centre)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
        assert _message(driver) == ""


def test_a_second_browser_is_told_when_the_server_is_full(browsers, phantom, tmp_path):
    scan, _, centre, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out", max_sessions=1) as address:
        first = browsers()
        _open(first, address)
        _click(first, "axial", centre)
        _wait(first, "document.body.dataset.clicks === '1'")
        second = browsers()
        second.get(address)
        _wait(second, "document.body.dataset.ready === '1'")
        second.find_element(By.ID, "open").click()
        _wait(second, "document.getElementById('message').textContent.includes('scans open in 1 other page')")
        assert "--max_sessions" in _message(second)
        first.find_element(By.ID, "undo").click()
        _wait(first, "document.body.dataset.clicks === '0'")
        assert _message(first) == ""
        first.get("about:blank")  # the first tab leaves: its place goes to the second
        second.find_element(By.ID, "open").click()
        _wait(second, "window.sam3d.state.volume !== null")
        assert _message(second).startswith("phantom_000.nii.gz: shown and segmented")


def test_downloads_come_through_fetch_and_no_url_holds_the_page_token(browsers, phantom, tmp_path):
    scan, _, centre, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        driver = browsers()
        _open(driver, address)
        _click(driver, "axial", centre)
        _wait(driver, "document.body.dataset.clicks === '1'")
        driver.find_element(By.ID, "save").click()
        saved = _wait(driver, "document.body.dataset.saved")
        # what the page hands the browser to save: the blob's name and size (headless Chromium saves nothing)
        driver.execute_script(
            "window.downloaded = [];"
            "HTMLAnchorElement.prototype.click = function () {"
            "  const name = this.download;"
            "  fetch(this.href).then((r) => r.arrayBuffer()).then((b) => window.downloaded.push([name, b.byteLength]));"
            "};"
        )
        driver.find_element(By.ID, "download-mask").click()
        _wait(driver, "window.downloaded.length === 1")
        driver.find_element(By.ID, "download-interactions").click()
        _wait(driver, "window.downloaded.length === 2")
        mask, interactions = driver.execute_script("return window.downloaded")
        assert mask == ["phantom_000_mask.nii.gz", Path(saved).stat().st_size]
        assert interactions[0] == "phantom_000_interactions.json"
        assert interactions[1] > 0
        token = driver.execute_script("return window.sam3d.state.page")
        assert len(token) == 65
        urls = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert any(url.endswith("/api/download/mask") for url in urls)
        assert any(url.endswith("/api/volume") for url in urls)
        assert [url for url in [driver.current_url, *urls] if token in url or "session=" in url] == []

        driver.refresh()  # a reload keeps its token, so its scan and clicks
        _wait(driver, "document.body.dataset.ready === '1' && window.sam3d.state.volume !== null")
        assert driver.execute_script("return window.sam3d.state.page") == token
        assert _dataset(driver, "clicks") == "1"


def test_drag_a_box_alt_drag_scribbles_undo_save_and_replay_with_predict(browsers, phantom, tmp_path):
    scan, label, centre, _ = phantom
    output = tmp_path / "out"
    net = MagicWand(dense_prompts=("box", "scribble"))
    d, h, w = centre
    with live_server(net, [scan], output) as address:
        driver = browsers()
        _open(driver, address)
        driver.execute_script(  # show the centre's slices
            "window.sam3d.state.cursor = arguments[0];",
            centre,
        )
        # a plain drag on the axial view: a 2D box on the centre's slice (d fixed)
        _drag(driver, "axial", [d, h - 4, w - 4], [d, h + 4, w + 4])
        _wait(driver, "document.body.dataset.interactions === '1' && document.body.dataset.maskVoxels > 0")
        box = _result(driver)["interactions"][0]
        assert box == {"kind": "box", "voxels": [[d, h - 4, w - 4], [d, h + 4, w + 4]], "positive": True}
        assert _dataset(driver, "clicks") == "0"
        boxed = int(_dataset(driver, "maskVoxels"))
        axial = _pixels(driver, "axial")
        assert _red(axial).sum() > 50
        assert _colour(axial, [0x33, 0xDD, 0x33]).sum() > 20  # the box's outline
        assert "1 box(es)" in driver.find_element(By.ID, "status").text

        # Shift+Alt+drag: a negative scribble through every voxel passed over (no gaps), on the slice
        _drag(driver, "axial", [d, h + 2, w - 3], [d, h + 2, w + 3], (Keys.SHIFT, Keys.ALT))
        _wait(driver, "document.body.dataset.interactions === '2'")
        scribble = _result(driver)["interactions"][1]
        assert scribble == {
            "kind": "scribble",
            "voxels": [[d, h + 2, c] for c in range(w - 3, w + 4)],
            "positive": False,
        }
        assert 0 < int(_dataset(driver, "maskVoxels")) < boxed
        assert _colour(_pixels(driver, "axial"), [0xEE, 0x33, 0xEE]).sum() > 20  # the scribble's voxels
        driver.find_element(By.ID, "undo").click()  # undo takes the scribble back, the box stays
        _wait(driver, "document.body.dataset.interactions === '1'")
        assert int(_dataset(driver, "maskVoxels")) == boxed

        # Alt+drag: a positive scribble on the coronal view (h fixed at the slice shown)
        _drag(driver, "coronal", [d - 2, h, w - 2], [d + 2, h, w + 2], (Keys.ALT,))
        _wait(driver, "document.body.dataset.interactions === '2'")
        positive = _result(driver)["interactions"][1]
        assert positive["positive"] is True
        assert positive["voxels"][0] == [d - 2, h, w - 2]
        assert positive["voxels"][-1] == [d + 2, h, w + 2]
        assert all(v[1] == h for v in positive["voxels"])
        steps = np.abs(np.diff(np.array(positive["voxels"]), axis=0))
        assert steps.max() == 1  # neighbours: no gap between the voxels passed over
        _click(driver, "axial", [d, h + 3, w], negative=True)  # and a plain click stays a click
        _wait(driver, "document.body.dataset.interactions === '3' && document.body.dataset.clicks === '1'")
        shown = _result(driver)["interactions"]

        driver.find_element(By.ID, "save").click()
        saved = nib.load(_wait(driver, "document.body.dataset.saved"))
        assert dice(np.asarray(saved.dataobj), np.asarray(nib.load(label).dataobj)) > 0.3

    # `sam3d predict` replays the saved interactions file: the same steps, and the page's mask
    case, prediction = replay(net, [scan], output / "phantom_000_interactions.json")
    assert [(i.kind, i.positive) for i in case.interactions] == [
        ("box", True),
        ("scribble", True),
        ("click", False),
    ]
    for ours, page in zip(case.interactions, shown, strict=True):
        np.testing.assert_allclose(ours.voxels.numpy(), page["voxels"], atol=1e-4)
    replayed = write_prediction(case.scan, prediction["probability"], 0.5, tmp_path / "replayed", False)
    np.testing.assert_array_equal(np.asarray(nib.load(replayed.mask).dataobj), np.asarray(saved.dataobj))


def _coloured(pixels, rgb):
    """Where the overlay of an object of colour ``rgb`` is drawn: 0.55 grey + 0.45 colour, for some grey."""
    grey = (pixels[..., :3].astype(float) - 0.45 * np.array(rgb)) / 0.55
    return (np.ptp(grey, axis=-1) < 3) & (grey.min(-1) > -3)


def test_segment_two_objects_in_their_colours_rename_one_and_save_one_label_map(browsers, tmp_path):
    scan, label, (one, two) = two_lesion_phantom(tmp_path)
    assert one[0] == two[0]  # both lesions on one axial slice
    output = tmp_path / "out"
    with live_server(MagicWand(), [scan], output) as address:
        driver = browsers()
        _open(driver, address)
        _click(driver, "axial", one)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
        driver.find_element(By.ID, "add-object").click()
        _wait(driver, "document.body.dataset.objects === '2' && document.body.dataset.selected === '2'")
        assert _dataset(driver, "clicks") == "0"  # the new object has no interaction yet
        _click(driver, "axial", two)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")

        red, blue = (driver.execute_script("return window.sam3d.colour(arguments[0])", i) for i in (1, 2))
        axial = _pixels(driver, "axial")
        for colour, centre in ((red, one), (blue, two)):
            at = driver.execute_script("return window.sam3d.screenPoint('axial', arguments[0])", centre)
            drawn = _coloured(axial, colour)
            assert drawn.sum() > 30
            rows, columns = np.nonzero(drawn)  # each colour around its own lesion
            assert abs(rows.mean() - at["y"]) < 15
            assert abs(columns.mean() - at["x"]) < 15

        name = driver.find_element(By.ID, "object-name")
        name.clear()
        name.send_keys("cyst", Keys.ENTER)  # Enter renames, as the Rename button does
        _wait(driver, "document.querySelector('#object-list li.selected').textContent.includes('2 cyst')")
        driver.find_element(By.CSS_SELECTOR, "#object-list li[data-id='1']").click()  # select object 1 again
        _wait(driver, "document.body.dataset.selected === '1'")
        driver.find_element(By.ID, "save").click()
        saved = _wait(driver, "document.body.dataset.saved")
        assert "cyst" in _message(driver)

        driver.find_element(By.CSS_SELECTOR, "#object-list li[data-id='2']").click()
        _wait(driver, "document.body.dataset.selected === '2'")
        driver.find_element(By.ID, "delete-object").click()
        driver.switch_to.alert.accept()  # it has an interaction: the page asks first
        _wait(driver, "document.body.dataset.objects === '1' && document.body.dataset.selected === '1'")
        axial = _pixels(driver, "axial")
        assert not _coloured(axial, blue).any()
        assert _coloured(axial, red).sum() > 30

    assert saved == str(output / "two_lesions_labels.nii.gz")
    values, truth = (np.asarray(nib.load(path).dataobj) for path in (saved, label))
    assert set(np.unique(values)) == {0, 1, 2}
    for value in (1, 2):
        assert dice(values == value, truth == value) > 0.6  # each object on its own lesion
    assert (output / "two_lesions_object-2_cyst.nii.gz").is_file()


def _rect(driver, element_id):
    return driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width};",
        element_id,
    )


def _window(driver, width, height):
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    _wait(driver, f"window.innerWidth === {width} && window.innerHeight === {height}")


def test_the_page_opens_the_first_scan_and_lists_an_uploaded_nrrd_by_its_name(browsers, phantom, tmp_path):
    scan, _, _, _ = phantom
    nrrd = tmp_path / "uploaded_case.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(scan)), str(nrrd))
    (tmp_path / "broken.nrrd").write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 9 9 9\nencoding: raw\n\n"
    )
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        driver = browsers()
        driver.get(address)
        _wait(driver, "document.body.dataset.ready === '1'")
        # open without pressing Open: the first listed scan is drawn
        assert (
            driver.execute_script("return window.sam3d.state.scan && window.sam3d.state.scan.name")
            == scan.name
        )
        assert _pixels(driver, "axial")[..., :3].max() > 100
        selected = "const s = document.getElementById('scans'); return s.options[s.selectedIndex].text"

        driver.find_element(By.ID, "upload").send_keys(str(nrrd))
        _wait(driver, "window.sam3d.state.scan.name === 'uploaded_case.nrrd (uploaded)'")
        assert driver.execute_script(selected) == "uploaded_case.nrrd (uploaded)"
        assert _message(driver).startswith("uploaded_case.nrrd (uploaded): shown and segmented")

        driver.find_element(By.ID, "upload").send_keys(str(tmp_path / "broken.nrrd"))
        _wait(driver, "document.getElementById('message').textContent.includes('broken.nrrd')")
        assert tempfile.gettempdir() not in _message(driver)  # no server folder, whatever it is
        assert driver.execute_script(selected) == "uploaded_case.nrrd (uploaded)"  # still open

        driver.refresh()  # a reload shows the page's scan, the uploaded one, in the list
        _wait(driver, "document.body.dataset.ready === '1' && window.sam3d.state.volume !== null")
        assert driver.execute_script(selected) == "uploaded_case.nrrd (uploaded)"
        driver.find_element(By.ID, "open").click()  # the uploaded entry is not a listed scan to open
        _wait(driver, "document.getElementById('message').textContent.includes('upload it again')")
        driver.execute_script("document.getElementById('scans').selectedIndex = 0")
        driver.find_element(By.ID, "open").click()
        _wait(driver, f"window.sam3d.state.scan.name === '{scan.name}'")
        assert driver.execute_script("return document.getElementById('scans').options.length") == 1


def test_a_reference_mode_checkpoint_says_so_and_the_page_shows_why_a_negative_click_is_refused(
    browsers, phantom, tmp_path
):
    scan, _, centre, _ = phantom
    with live_server(
        MagicWand(), [scan], tmp_path / "out", view=ViewSettings(click_mode="reference")
    ) as address:
        driver = browsers()
        _open(driver, address)
        said = driver.find_element(By.ID, "click-mode").text
        assert "trained with reference clicks" in said
        assert "never learned negative ones" in said
        assert "no negative clicks" in driver.find_element(By.ID, "negative-help").text
        _click(driver, "axial", centre)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
        voxels = _dataset(driver, "maskVoxels")
        _click(driver, "axial", [centre[0], centre[1], centre[2] - 4], negative=True)
        _wait(
            driver, "document.getElementById('message').textContent.includes('never learned negative clicks')"
        )
        assert "clicks/interactive.yaml" in _message(driver)
        assert _dataset(driver, "clicks") == "1"
        assert _dataset(driver, "maskVoxels") == voxels


def test_at_1366x768_the_help_shows_the_canvases_fill_the_window_and_messages_float(
    browsers, phantom, tmp_path
):
    scan, _, centre, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        driver = browsers()
        _window(driver, 1366, 768)
        _open(driver, address)
        assert _message(driver)  # the scan's note is shown...
        before = _rect(driver, "axial")
        _click(driver, "axial", centre)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
        assert _message(driver) == ""  # ...and gone: the canvases did not move
        assert _rect(driver, "axial") == before

        screenshot = tmp_path / "page-1366x768.png"
        driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size == (1366, 768)
        for element in ("status", "click-mode"):
            assert 0 <= _rect(driver, element)["top"]
        help_box = driver.find_element(By.CSS_SELECTOR, ".help").rect
        assert help_box["y"] >= 0
        assert help_box["y"] + help_box["height"] <= 768
        for view in ("axial", "render"):
            box = _rect(driver, view)
            assert box["bottom"] <= help_box["y"]
            assert box["right"] <= 1366
        small = _rect(driver, "axial")["width"]
        assert small >= 300  # at least a third more than 4 canvases of the old fixed 360 px could get

        _window(driver, 1920, 1080)
        _wait(driver, f"document.getElementById('axial').getBoundingClientRect().width > {small}")
        large = _rect(driver, "axial")
        assert driver.execute_script("return document.getElementById('axial').width") == round(large["width"])
        assert _red(_pixels(driver, "axial")).sum() > 50  # redrawn at the new size
        _window(driver, 1000, 700)
        _wait(driver, f"document.getElementById('axial').getBoundingClientRect().width < {small}")
        assert driver.find_element(By.CSS_SELECTOR, ".help").rect["y"] < 700


def test_the_overlay_opacity_and_outline_only(browsers, phantom, tmp_path):
    scan, _, centre, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        driver = browsers()
        _open(driver, address)
        _click(driver, "axial", centre)
        _wait(driver, "document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
        red = driver.execute_script("return window.sam3d.colour(1)")
        filled = _coloured(_pixels(driver, "axial"), red)  # the default: 45% of the colour over the slice
        assert filled.sum() > 50

        def set_opacity(percent):
            driver.execute_script(
                "const s = document.getElementById('opacity'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));",
                percent,
            )

        set_opacity(100)
        solid = _colour(_pixels(driver, "axial"), red)
        assert abs(int(solid.sum()) - int(filled.sum())) < 0.05 * filled.sum()  # the same voxels, all colour
        set_opacity(0)
        assert not _colour(_pixels(driver, "axial"), red).any()
        assert not _red(_pixels(driver, "axial")).any()

        set_opacity(100)
        driver.find_element(By.ID, "outline").click()
        outline = _colour(_pixels(driver, "axial"), red)
        assert 0 < outline.sum() < 0.6 * solid.sum()
        assert not (outline & ~solid).any()  # the border of the mask drawn, its inside not
        inside = ndimage.binary_erosion(solid, iterations=10)  # more than two voxels in from the border
        assert inside.sum() > 20
        assert not (outline & inside).any()


def test_the_3d_view_of_a_box_of_thick_slices_has_no_stripes(browsers, phantom, tmp_path):
    scan, _, _, _ = phantom
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        driver = browsers()
        _open(driver, address)
        # a cuboid object on slices 3 mm apart, 0.8 mm voxels in them, as a thick-sliced CT gives
        driver.execute_script(
            "const s = window.sam3d.state; s.scan.spacing = [3, 0.8, 0.8];"
            "const data = new Uint8Array(8 * 40 * 40).fill(1);"
            "s.objects = [{id: 1, name: 'box', volume_ml: 1, mask: {start: [2, 5, 5], shape: [8, 40, 40], data, count: data.length}}];"
            "window.sam3d.buildSurface(); window.sam3d.drawRender();"
        )
        pixels = _pixels(driver, "render")[..., 0].astype(int)  # object 1 is red
        # Along each row, a stripe-free face gets brighter or darker steadily; stripes go up and down.
        turns = []
        for row in pixels:
            drawn = row[row > 0]
            steps = np.diff(drawn)
            steps = steps[np.abs(steps) > 3]
            turns.append(int((np.diff(np.sign(steps)) != 0).sum()))
        drawn_rows = [t for t, row in zip(turns, pixels, strict=True) if (row > 0).sum() > 20]
        assert len(drawn_rows) > 50
        # at most one turn (the edge between two faces) in nearly every row; the old shading had 2 to 5
        assert np.mean(np.array(drawn_rows) <= 1) > 0.95, np.bincount(drawn_rows)
