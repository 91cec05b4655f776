"""The configs and the authors' folds that ship inside the package (the repository's ``configs/``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["shipped_file"]


def shipped_file(relative: str) -> Path:
    """A file of the shipped ``configs/`` folder, e.g. ``kits.yaml`` or ``splits/kits.json`` (may not exist)."""
    return Path(str(files("sam3d") / "configs" / relative))
