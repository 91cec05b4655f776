"""Wall time of ``sam3d --version``, ``sam3d --help`` and ``sam3d fit --help``; the error of a misspelt option.

    .venv/bin/python benchmarks/cli_startup.py               # 3 runs of each, median and range
    .venv/bin/python benchmarks/cli_startup.py --repeats 5

Each command runs as ``python -m sam3d`` in a fresh process (nothing cached between runs), so the times
include the interpreter's start and every import the command needs: ``--version`` and ``--help`` import
no torch or Lightning (``sam3d.console``); a subcommand's help builds Lightning's parser for the model,
data and trainer classes, so it imports them. The load average is printed beside the times, since on a
shared machine it dominates them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--version": ["--version"],
    "--help": ["--help"],
    "fit --help": ["fit", "--help"],
}
MISSPELT = ["fit", "-c", "synthetic.yaml", "--data.root", "data", "--data.clik_mode", "reference"]
BAD_VALUE = ["fit", "-c", "synthetic.yaml", "--data.root", "data", "--evaluation.protocol", "papr"]


def run(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds and result of ``python -m sam3d ARGS`` from the repository, with this checkout first on the path."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "sam3d", *args],
        check=False,
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPOSITORY,
    )
    return time.perf_counter() - start, result


def main() -> None:
    """Print the median and range of each command's time, then the error output of two bad command lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, args in COMMANDS.items():
        seconds = []
        for _ in range(options.repeats):
            elapsed, result = run(args)
            if result.returncode != 0:
                sys.exit(f"sam3d {name} failed ({result.returncode}): {result.stderr[-2000:]}")
            seconds.append(elapsed)
        print(
            f"sam3d {name:<10} median {statistics.median(seconds):6.2f} s  "
            f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {options.repeats} runs)"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for args in (MISSPELT, BAD_VALUE):
        elapsed, result = run(args)
        print(f"\n$ sam3d {' '.join(args)}   # exit status {result.returncode}, {elapsed:.2f} s")
        print(result.stderr.rstrip())


if __name__ == "__main__":
    main()
