"""The ``sam3d`` command line.

Utility subcommands (dataset tools) are plain typed functions exposed through jsonargparse;
training, testing and prediction arrive through Lightning's CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from jsonargparse import CLI

from sam3d import __version__

UTILITIES: dict[str, Callable[..., object]] = {}


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``sam3d`` console script (also ``python -m sam3d``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in ("--version", "-V"):
        print(f"sam3d {__version__}")
        return
    CLI(UTILITIES, args=argv, version=f"sam3d {__version__}")
