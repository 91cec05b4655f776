"""The ``sam3d`` console script: ``--version`` and the top-level ``--help`` answered without torch or Lightning.

Everything else goes to :func:`sam3d.cli.main`, whose imports (torch, Lightning, MONAI, TorchIO) take
seconds; these two answers need none of them.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from sam3d import __version__

# The Lightning subcommands and `serve` (sam3d.cli.Sam3dCLI.subcommands), as the top-level help shows them.
SUBCOMMANDS = {
    "fit": "Train a model: a config, --data.root and --model.sam_checkpoint (resume: --ckpt_path last).",
    "validate": "Score a checkpoint on the validation cases.",
    "test": "Score a checkpoint on the test cases with simulated clicks: cases.csv, summary.json, pictures.",
    "predict": "Segment scans from a clicks file (--data.predict_scans, --data.predict_clicks).",
    "serve": "Serve a page to click on scans, see and correct their 3D masks and save them.",
}
# The dataset utilities (the keys of sam3d.cli.UTILITIES), each with its own --help.
UTILITY_NAMES = (
    *("make-splits", "dataset-stats", "check-dataset", "make-synthetic", "make-lits117", "export-nnunet"),
    *("import-reference", "aggregate-folds", "report", "score-masks"),
)
DESCRIPTION = (
    "Promptable 3D tumour segmentation: SAM adapted to CT volumes. Training, evaluation and inference use "
    "the subcommands below; the dataset utilities are listed at the end."
)


def top_level_help() -> str:
    """``sam3d --help``: the subcommands and utilities, with the options that come before a subcommand."""
    utilities = textwrap.fill(
        " | ".join(UTILITY_NAMES),
        width=76,
        initial_indent="  ",
        subsequent_indent="  ",
        break_on_hyphens=False,
    )
    parser = argparse.ArgumentParser(
        prog="sam3d",
        description=textwrap.fill(DESCRIPTION, width=78, break_on_hyphens=False),
        epilog=f"dataset utilities (`sam3d UTILITY --help` for each):\n{utilities}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="Print version and exit.")
    parser.add_argument("-c", "--config", help="Path to a configuration file in json or yaml format.")
    parser.add_argument(
        "--print_config",
        metavar="[=flags]",
        help="Print the configuration after applying all other arguments and exit (flags: skip_default, "
        "skip_unset).",
    )
    subcommands = parser.add_subparsers(
        title="subcommands", description="`sam3d SUBCOMMAND --help` lists a subcommand's options."
    )
    for name, summary in SUBCOMMANDS.items():
        subcommands.add_parser(name, help=summary)
    return parser.format_help()


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``sam3d`` console script (also ``python -m sam3d``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv == ["--version"]:
        print(f"sam3d {__version__}")
        return
    if argv in (["--help"], ["-h"]):
        print(top_level_help(), end="")
        return
    from sam3d.cli import main as run_command

    run_command(argv)
