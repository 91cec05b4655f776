"""`sam3d serve` as a user runs it: the checkpoint's tiny network behind the page, its log, its refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import SYNTHETIC_CONFIG
from serve_helpers import Page, lesion_centre

from sam3d.cli import main
from sam3d.serve import server
from sam3d.serve.server import run


class Log:
    """The lines a process writes, collected by a thread."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(
            target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True
        )
        self.thread.start()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")


@contextmanager
def serving(
    arguments: list[str], cwd: Path, environment: dict[str, str] | None = None
) -> Iterator[tuple[str, Log]]:
    """``sam3d serve ARGUMENTS`` on any free port: its address and log; stopped by Ctrl+C, which must exit 0."""
    # after the arguments: a --config given later would override them
    command = [sys.executable, "-m", "sam3d", "serve", *arguments, "--port", "0", "--trainer.logger", "false"]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "disabled", **(environment or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = Log(process.stderr)
    try:
        yield log.wait_for(r"open (http://127\.0\.0\.1:\d+)/").group(1), log
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C
        assert process.wait(timeout=60) == 0
    log.thread.join(timeout=10)
    assert "Traceback" not in "".join(log.lines)


def test_serve_a_checkpoint_click_and_save_with_the_tiny_network(synthetic_root, trained, tmp_path):
    _, checkpoint = trained
    scan, label = (synthetic_root / part / "phantom_000.nii.gz" for part in ("imagesTr", "labelsTr"))
    centre, _ = lesion_centre(scan, label)
    arguments = [
        *("--config", str(SYNTHETIC_CONFIG), "--ckpt_path", str(checkpoint)),
        *("--data.predict_scans", json.dumps([str(scan)]), "--prediction.output_dir", str(tmp_path / "out")),
        *("--crops", "paper"),  # one crop, so the second click reuses its encoding
    ]
    with serving(arguments, tmp_path) as (address, log):
        page = Page(address)
        config = page("/api/config")
        assert config["scans"] == [scan.name]
        assert config["protocol"] == "paper"
        assert config["crop_size"] == [64] * 3
        assert config["window"] == [-100.0, 200.0]  # the checkpoint's preprocessing
        assert config["click_mode"] == "labelled"  # the checkpoint's clicks (configs/synthetic.yaml)
        page("/api/open", {"index": 0})
        page("/api/click", {"point": centre})
        page("/api/click", {"point": [centre[0], centre[1], centre[2] + 5], "positive": False})
        saved = page("/api/save")
        log.wait_for(r"click 1 \(positive\) at .*: \d+\.\d+ s \(crop encoded\)")
        log.wait_for(r"click 2 \(negative\) at .*: \d+\.\d+ s \(crop encoding reused\)")
        log.wait_for("saved .*phantom_000_mask.nii.gz")
    assert "Application shutdown complete" in "".join(log.lines)
    mask, source = nib.load(saved["files"]["mask"]), nib.load(scan)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    # serving leaves no run folder or config behind
    assert not any(tmp_path.glob("runs"))
    assert not any(tmp_path.glob("*.yaml"))


def test_serve_needs_a_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--config", str(SYNTHETIC_CONFIG), "--trainer.logger", "false"])
    assert "sam3d serve needs --ckpt_path" in str(exit_info.value.code)


def test_sharing_the_page_beyond_this_machine_warns_that_there_is_no_authentication(monkeypatch, capsys):
    bound, loopback = [], server.bind
    monkeypatch.setattr(server, "bind", lambda host, port: bound.append(host) or loopback("127.0.0.1", 0))
    monkeypatch.setattr(server.uvicorn.Server, "run", lambda self, sockets: sockets[0].close())
    run(object(), host="0.0.0.0", port=0)  # type: ignore[arg-type]
    assert bound == ["0.0.0.0"]
    assert "there is no authentication" in capsys.readouterr().err
    run(object(), host="127.0.0.1", port=0)  # type: ignore[arg-type]
    assert "authentication" not in capsys.readouterr().err
