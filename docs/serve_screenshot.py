"""Draws docs/images/sam3d-serve.png: the `sam3d serve` page at 1366x768 in headless Chromium.

    PYTHONPATH=. .venv/bin/python docs/serve_screenshot.py

A synthetic phantom behind the page tests' stand-in network (``tests/serve_helpers.py``'s ``MagicWand``, a
region grower, so no checkpoint is needed): object 1, ``lesion``, from one click; object 2, ``spine``, from a
box dragged on the axial view and a negative scribble (Shift+drag) under it. Needs Debian's ``chromium`` and
``chromium-driver`` and the dev extra (selenium).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serve_helpers import PREPROCESSING, MagicWand, lesion_centre, live_server

from sam3d.data.scans import load_scan
from sam3d.data.synthetic import make_synthetic_dataset

TARGET = ROOT / "docs" / "images" / "sam3d-serve.png"
SIZE = (1366, 768)


class PageDriver:
    """The page in one headless Chromium: mouse gestures on voxels of its views."""

    def __init__(self, profile: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        options.add_argument(f"--user-data-dir={profile}")
        service = webdriver.ChromeService(shutil.which("chromedriver"))
        self.driver = webdriver.Chrome(options=options, service=service)
        width, height = SIZE
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)

    def wait(self, script: str) -> None:
        """Wait until the page's JavaScript expression ``script`` is true."""
        WebDriverWait(self.driver, 60).until(lambda d: d.execute_script(f"return {script}"))

    def _on(self, view: str, voxel: list[int]) -> tuple[ActionChains, dict[str, float]]:
        canvas = self.driver.find_element(By.ID, view)
        at = self.driver.execute_script(
            "return window.sam3d.screenPoint(arguments[0], arguments[1])", view, voxel
        )
        offset = round(at["x"] - canvas.size["width"] / 2), round(at["y"] - canvas.size["height"] / 2)
        return ActionChains(self.driver).move_to_element_with_offset(canvas, *offset), at

    def click(self, view: str, voxel: list[int]) -> None:
        """Click ``voxel`` (on the slice shown) of ``view``."""
        self._on(view, voxel)[0].click().perform()

    def drag(self, view: str, start: list[int], end: list[int], shift: bool = False) -> None:
        """Drag from voxel ``start`` to ``end`` of ``view``: a box, or with ``shift`` a negative scribble."""
        chain, at = self._on(view, start)
        _, to = self._on(view, end)
        step = round((to["x"] - at["x"]) / 2), round((to["y"] - at["y"]) / 2)
        if shift:
            chain.key_down(Keys.SHIFT)
        chain.click_and_hold().move_by_offset(*step).move_by_offset(*step).release()
        if shift:
            chain.key_up(Keys.SHIFT)
        chain.perform()

    def name_object(self, name: str) -> None:
        """Rename the selected object."""
        box = self.driver.find_element(By.ID, "object-name")
        box.clear()
        box.send_keys(name, Keys.ENTER)
        self.wait(f"document.querySelector('#object-list li.selected').textContent.includes('{name}')")


def main() -> None:
    """Segment two objects on a phantom and save the page's screenshot."""
    work = Path(tempfile.mkdtemp())
    try:
        root = make_synthetic_dataset(work / "synthetic", num_cases=5, seed=0)
        scan, label = (root / part / "phantom_004.nii.gz" for part in ("imagesTr", "labelsTr"))
        centre, _ = lesion_centre(scan, label)
        intensities = load_scan(scan, PREPROCESSING, keep_intensities=True).intensities
        assert intensities is not None
        bone = np.argwhere(intensities[centre[0]].numpy() > 250)  # the spine on the lesion's axial slice
        (h0, w0), (h1, w1) = (bone.min(0) - 2).tolist(), (bone.max(0) + 2).tolist()
        slice_ = centre[0]
        net = MagicWand(dense_prompts=("box", "scribble"))
        with live_server(net, [scan], work / "out") as address:
            page = PageDriver(work / "profile")
            page.driver.get(address)
            page.wait("document.body.dataset.ready === '1' && window.sam3d.state.volume !== null")
            page.driver.execute_script(
                "window.sam3d.state.cursor = arguments[0]; window.sam3d.fit();", centre
            )
            page.click("axial", centre)
            page.wait("document.body.dataset.clicks === '1' && document.body.dataset.maskVoxels > 0")
            page.name_object("lesion")
            page.driver.find_element(By.ID, "add-object").click()
            page.wait("document.body.dataset.selected === '2'")
            page.name_object("spine")
            page.drag("axial", [slice_, h0, w0], [slice_, h1, w1])
            page.wait("document.body.dataset.interactions === '1' && document.body.dataset.maskVoxels > 0")
            page.drag("axial", [slice_, h1 + 1, w0], [slice_, h1 + 1, w1], shift=True)
            page.wait("document.body.dataset.interactions === '2'")
            spine = [slice_, (h0 + h1) // 2, (w0 + w1) // 2]
            page.driver.execute_script("window.sam3d.state.cursor = arguments[0]; window.sam3d.fit();", spine)
            time.sleep(0.5)  # the last frame drawn
            page.driver.save_screenshot(str(TARGET))
            page.driver.quit()
        print(f"wrote {TARGET}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
