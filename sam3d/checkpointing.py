"""Checkpoint files: written atomically, and found by name (``--ckpt_path best|last``) only when complete.

Lightning writes a checkpoint into a temporary file of the system's temporary folder and moves it into
place; where that folder is another filesystem (a tmpfs ``/tmp``), the move is a copy over the old file,
and a full disk leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target
instead and renames, so the old file stays whole until the new one is complete.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sam3d.data.scans.writing import write_atomically
from sam3d.models.checkpoints import CheckpointError, load_weights_file

# `--ckpt_path best|last`: file name patterns in a run's checkpoints folder (see the CLI's RUN_DEFAULTS).
NAMED_CHECKPOINTS = {"last": "last.ckpt", "best": "best-*.ckpt"}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, saving local files with :func:`write_atomically` (remote ones as Lightning)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path``; an interrupted save leaves the previous file intact."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Serialised first: torch.save into a file that fails mid-write raises a RuntimeError that hides
        # the OSError (a full disk), which the CLI reports as such.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as stream:
                stream.write(buffer.getbuffer())

        write_atomically(target, write)


def newest_complete_checkpoint(root: Path, name: str) -> tuple[Path, dict[str, Any]] | None:
    """The ``best`` or ``last`` checkpoint most recently written under ``root`` that loads, and its content.

    Files that do not load (truncated by a full disk, corrupt) are skipped, each with a line on stderr.
    """
    candidates = sorted(
        root.glob(f"**/checkpoints/{NAMED_CHECKPOINTS[name]}"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for candidate in candidates:
        try:
            return candidate, load_weights_file(candidate, "checkpoint")
        except CheckpointError as error:
            print(f"--ckpt_path {name}: skipped, as it does not load: {error}", file=sys.stderr)
    return None
