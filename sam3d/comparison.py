"""``sam3d report``: one comparison of methods from several test runs (folds, seeds, methods).

Each test run's ``summary.json`` (written by ``sam3d test`` for any method) gives one value per run of
every quantity: the mean over its cases of Dice, NSD and HD95 after the last click, its clicks, trainable
parameters, peak memory and seconds per case. Runs of one method with the same clicks form one row of
the table, mean +- standard deviation over the runs (folds and seeds).

A summary also records the data it was tested on (dataset, data folder and the scored cases); the report
warns when a row pools runs on different datasets or folders, or when the rows were not tested on the
same cases, since such a table does not compare like with like.
"""

from __future__ import annotations

import csv
import glob
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sam3d.errors import Sam3dError
from sam3d.reporting import METRICS

NUMBERS = ("trainable_parameters", "peak_memory_bytes", "seconds_per_case")


@dataclass(frozen=True)
class TestRun:
    """What the comparison reads from one test run's ``summary.json``."""

    path: Path
    method: str
    clicks: int | None
    final: dict[str, float | None]  # metric -> mean over the run's cases after the last click
    dice_by_clicks: dict[int, float | None]  # clicks -> mean Dice over the run's cases
    numbers: dict[str, float | None]  # NUMBERS -> value (None where the summary does not record it)
    peak_memory_of: str | None
    data: dict[str, Any] | None = None  # dataset, root, fold, split_file (None: not recorded)
    case_ids: tuple[str, ...] | None = None  # the scored cases (None: not recorded)


@dataclass(frozen=True)
class Row:
    """One method with one number of clicks: its runs' values."""

    method: str
    clicks: int | None
    runs: list[TestRun]

    def values(self, name: str) -> list[float]:
        """The runs' values of a metric or of one of NUMBERS, leaving out runs without one."""
        if name in METRICS:
            found = [run.final[name] for run in self.runs]
        else:
            found = [run.numbers[name] for run in self.runs]
        return [value for value in found if value is not None]


def summary_files(runs: str | Sequence[str]) -> list[Path]:
    """``summary.json`` files from files, folders (searched recursively) and glob patterns, in order, once each."""
    runs = [runs] if isinstance(runs, str) else list(runs)
    files: list[Path] = []
    for pattern in runs:
        for match in sorted(glob.glob(pattern)) or [pattern]:
            path = Path(match)
            if path.is_dir():
                files += sorted(path.rglob("summary.json"))
            elif path.is_file():
                files.append(path)
            else:
                raise Sam3dError(f"{path} does not exist; pass test runs' summary.json files or folders")
    unique = list(dict.fromkeys(file.resolve() for file in files))
    if not unique:
        raise Sam3dError(f"no summary.json found in {', '.join(runs)}; run `sam3d test` first")
    return unique


def read_run(path: Path) -> TestRun:
    """One test run from its ``summary.json``; a summary without a method is named after its run folder."""
    try:
        summary = json.loads(path.read_text())
        final = {metric: summary["final"][metric]["mean"] for metric in METRICS}
        by_clicks = {int(clicks): value["dice"]["mean"] for clicks, value in summary["by_clicks"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise Sam3dError(
            f"{path} is not a summary of `sam3d test` ({type(error).__name__}: {error})"
        ) from None
    method = summary.get("method")
    if method is None:
        folder = path.parent.parent if path.parent.name == "test" else path.parent
        method = folder.name
        print(f"{path} records no method (written by an older sam3d); named {method!r}", file=sys.stderr)
    clicks = summary.get("clicks", max(by_clicks, default=None))
    return TestRun(
        path=path,
        method=str(method),
        clicks=clicks,
        final=final,
        dice_by_clicks=by_clicks,
        numbers={name: summary.get(name) for name in NUMBERS},
        peak_memory_of=summary.get("peak_memory_of"),
        data=summary.get("data") if isinstance(summary.get("data"), dict) else None,
        case_ids=tuple(map(str, summary["case_ids"])) if isinstance(summary.get("case_ids"), list) else None,
    )


def group_runs(runs: Sequence[TestRun]) -> list[Row]:
    """Rows of (method, clicks) in the order they first appear."""
    groups: dict[tuple[str, int | None], list[TestRun]] = {}
    for run in runs:
        groups.setdefault((run.method, run.clicks), []).append(run)
    return [Row(method, clicks, members) for (method, clicks), members in groups.items()]


def _row_name(row: Row) -> str:
    return _label(row.method, row.clicks).replace("\n", " ")


def data_warnings(rows: Sequence[Row]) -> list[str]:
    """Why the table may not compare like with like: rows pooling runs on different data, rows on other cases.

    Runs of one row may differ in fold (cross-validation pools the folds' test cases); they must share the
    dataset and the data folder. Rows are compared on the union of their runs' scored cases.
    """
    warnings = []
    for row in rows:
        recorded = [run.data for run in row.runs if run.data is not None]
        for field, what in (("dataset", "datasets"), ("root", "data folders")):
            values = sorted({str(data.get(field)) for data in recorded})
            if len(values) > 1:
                warnings.append(
                    f"{_row_name(row)} pools runs tested on different {what}: {', '.join(values)}"
                )
    runs = [run for row in rows for run in row.runs]
    unrecorded = [run for run in runs if run.case_ids is None]
    if unrecorded:
        warnings.append(
            f"{len(unrecorded)} of {len(runs)} runs do not record the cases they were tested on (summaries "
            f"of an older sam3d, e.g. {unrecorded[0].path}): whether all were tested on the same data is not "
            "checked"
        )
    elif len(rows) > 1:
        cases = {_row_name(row): {case for run in row.runs for case in run.case_ids or ()} for row in rows}
        if len({frozenset(found) for found in cases.values()}) > 1:
            every = set().union(*cases.values())
            counts = "; ".join(
                f"{name}: {len(found)} cases" + (f" ({len(every - found)} missing)" if every - found else "")
                for name, found in cases.items()
            )
            warnings.append(
                f"the methods were not tested on the same cases ({counts} of {len(every)}); compare runs "
                "of the same folds and split"
            )
    return warnings


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


CSV_COLUMNS = [
    "method",
    "clicks",
    "runs",
    *(f"{name}_{stat}" for name in (*METRICS, *NUMBERS) for stat in ("mean", "std")),
    "peak_memory_of",
]


def csv_record(row: Row) -> dict[str, Any]:
    """One row of ``comparison.csv``: raw values (Dice and NSD as fractions, HD95 in mm, bytes, seconds)."""
    record: dict[str, Any] = {"method": row.method, "clicks": row.clicks, "runs": len(row.runs)}
    for name in (*METRICS, *NUMBERS):
        record[f"{name}_mean"], record[f"{name}_std"] = mean_std(row.values(name))
    parameters = record["trainable_parameters_mean"]
    if parameters is not None and float(parameters).is_integer():  # one count for all runs: keep it exact
        record["trainable_parameters_mean"] = int(parameters)
    record["peak_memory_of"] = "/".join(sorted({r.peak_memory_of for r in row.runs if r.peak_memory_of}))
    return record


def _cell(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The table for papers and the README: Dice and NSD in percent, memory in GiB."""
    header = (
        "| method | clicks | runs | Dice (%) | NSD (%) | HD95 (mm) | trainable parameters "
        "| peak memory (GiB) | seconds per case |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        parameters = r["trainable_parameters_mean"]
        memory = _cell(r["peak_memory_bytes_mean"], r["peak_memory_bytes_std"], 2**-30)
        if r["peak_memory_of"] and memory != "n/a":
            memory += f" ({r['peak_memory_of'].upper()})"
        cells = [
            r["method"],
            "n/a" if r["clicks"] is None else str(r["clicks"]),
            str(r["runs"]),
            _cell(r["dice_mean"], r["dice_std"], 100),
            _cell(r["nsd_mean"], r["nsd_std"], 100),
            _cell(r["hd95_mean"], r["hd95_std"]),
            "n/a" if parameters is None else f"{round(parameters):,}",
            memory,
            _cell(r["seconds_per_case_mean"], r["seconds_per_case_std"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dice_curve(row: Row) -> list[tuple[int, float, float | None]]:
    """``(clicks, mean, std)`` over the row's runs of the Dice after each number of clicks."""
    curve = []
    for clicks in sorted({c for run in row.runs for c in run.dice_by_clicks}):
        mean, std = mean_std([v for run in row.runs if (v := run.dice_by_clicks.get(clicks)) is not None])
        if mean is not None:
            curve.append((clicks, mean, std))
    return curve


def _label(method: str, clicks: int | None) -> str:
    return f"{method}\n({clicks} click{'s' if clicks > 1 else ''})" if clicks else method


def comparison_figure(rows: Sequence[Row], records: Sequence[dict[str, Any]]) -> Figure:
    """Dice per method (mean ± std over runs); beside it Dice against clicks for the methods with clicks.

    Both Dice axes span 0 to 100 %, so that a difference of a point looks like one.
    """
    clicked = [row for row in rows if row.clicks]
    figure = Figure(figsize=(12 if clicked else 6, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if clicked else 1, squeeze=False)[0]
    means = [100 * (r["dice_mean"] or 0.0) for r in records]
    errors = [100 * (r["dice_std"] or 0.0) for r in records]
    axes[0].bar(range(len(records)), means, yerr=errors, capsize=4, color="tab:blue")
    labels = [_label(r["method"], r["clicks"]) for r in records]
    axes[0].set_xticks(range(len(records)), labels, rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("Dice (%)")
    axes[0].set_ylim(0, 100)
    axes[0].set_title("Dice per method (mean ± std over runs)")
    if clicked:
        curve = axes[1]
        for row in clicked:
            if not (points := dice_curve(row)):
                continue
            clicks, dice, std = zip(*points, strict=True)
            curve.errorbar(
                clicks,
                [100 * d for d in dice],
                yerr=[100 * (s or 0.0) for s in std],
                marker="o",
                capsize=3,
                label=_label(row.method, row.clicks).replace("\n", " "),
            )
        for record in records:
            if not record["clicks"] and record["dice_mean"] is not None:
                curve.axhline(100 * record["dice_mean"], linestyle="--", color="gray", linewidth=1)
                curve.annotate(record["method"], (1, 100 * record["dice_mean"]), fontsize=7, color="gray")
        curve.xaxis.set_major_locator(MaxNLocator(integer=True))
        curve.set_xlabel("clicks")
        curve.set_ylabel("Dice (%)")
        curve.set_ylim(0, 100)
        curve.set_title("Dice against clicks (dashed: methods without clicks)")
        curve.legend(fontsize=8)
    figure.tight_layout()
    return figure


def figure_png(rows: Sequence[Row], records: Sequence[dict[str, Any]], path: Path) -> None:
    """Write :func:`comparison_figure` as a PNG."""
    comparison_figure(rows, records).savefig(path, dpi=120)


def _log_to_wandb(records: Sequence[dict[str, Any]], figure: Path) -> bool:
    """Log the table and the figure to the open W&B run, if there is one."""
    import wandb

    if wandb.run is None:
        return False
    columns: list[str | int] = list(CSV_COLUMNS)
    table = wandb.Table(columns=columns, data=[[r[c] for c in CSV_COLUMNS] for r in records])
    wandb.run.log({"comparison/table": table, "comparison/figure": wandb.Image(str(figure))})
    return True


def report(runs: list[str] | str, output: str = "comparison") -> str:
    """Compare methods over several test runs: a table (Markdown and CSV) and a figure in one folder.

    Examples: ``sam3d report runs --output comparison`` (every ``summary.json`` under ``runs``);
    ``sam3d report "[runs/kits-spatial-*, runs/kits-lora-*]"`` (a list).

    Runs of one method with the same clicks are averaged (mean ± sample std over folds and seeds); the
    table is also logged to W&B when a run is open (e.g. when called from Python inside ``wandb.init``).
    Runs tested on different data are warned about (``sam3d: warning:``, also under the Markdown table).

    Args:
        runs: Test runs' ``summary.json`` files or folders holding them, one or a list; glob patterns allowed.
        output: Folder of ``comparison.md``, ``comparison.csv`` and ``comparison.png``.

    Returns:
        The Markdown table.
    """
    rows = group_runs([read_run(path) for path in summary_files(runs)])
    records = [csv_record(row) for row in rows]
    warnings = data_warnings(rows)
    for warning in warnings:
        print(f"sam3d: warning: {warning}", file=sys.stderr)
    folder = Path(output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        table = markdown_table(records)
        notes = "".join(f"\n**Warning:** {warning}\n" for warning in warnings)
        (folder / "comparison.md").write_text(table + "\n" + notes)
        with open(folder / "comparison.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(records)
        figure_png(rows, records, folder / "comparison.png")
    except OSError as error:
        raise Sam3dError(f"cannot write the comparison into {folder}: {error}") from None
    logged = _log_to_wandb(records, folder / "comparison.png")
    print(table)
    print(
        f"{len(records)} methods from {sum(len(r.runs) for r in rows)} test runs -> {folder}"
        + (" (and W&B)" if logged else "")
    )
    return table
