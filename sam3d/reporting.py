"""Test-run outputs: per-case CSV, summary JSON and pictures of the best, median and worst cases."""

from __future__ import annotations

import csv
import glob
import json
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sam3d.cvpr25 import challenge_scores
from sam3d.errors import Sam3dError
from sam3d.evaluation import EvaluationSettings
from sam3d.metrics import clicks_curve_area, summarize

METRICS = ("dice", "nsd", "hd95")
Row = Mapping[str, Any]


def click_auc(rows: Sequence[Row], steps: int) -> dict[str, list[float]]:
    """Area under the Dice and NSD curves over the click sequence, one value per (case, repeat).

    As the CVPR 2025 interactive 3D segmentation challenge scores (DSC-AUC, NSD-AUC): trapezoids one click
    wide over the ``steps`` predictions of a sequence (the first clicks' and each correction's), so the area
    runs from 0 to ``steps - 1``. A sequence that stopped early (a perfect prediction gets no correction
    click) keeps its last value, as the challenge scores an unchanged prediction again. Unlike the
    challenge, NSD is not zeroed where Dice is at most 0.2.
    """
    curves: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for row in rows:
        curves[(str(row["case"]), int(row["repeat"]))].append(row)
    areas: dict[str, list[float]] = {"dice": [], "nsd": []}
    for curve in curves.values():
        curve = sorted(curve, key=lambda row: int(row["clicks"]))[:steps]
        for metric, values in areas.items():
            points = [float(row[metric]) for row in curve]
            points += points[-1:] * (steps - len(points))
            values.append(clicks_curve_area(points))
    return areas


def cvpr25_summary(rows: Sequence[Row]) -> dict[str, Any]:
    """The CVPR 2025 challenge's scores over the cases: DSC_AUC, NSD_AUC, final DSC and NSD (mean, std, ...).

    Each case's rows are its box step (``clicks`` 0) and its correction steps, NSD already gated.
    """
    steps: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        steps[str(row["case"])].append(row)
    scores = []
    for case_rows in steps.values():
        ordered = sorted(case_rows, key=lambda row: int(row["clicks"]))
        dice, nsd = [float(r["dice"]) for r in ordered], [float(r["nsd"]) for r in ordered]
        scores.append(challenge_scores(dice, nsd, n_clicks=len(ordered) - 1))
    return {
        name: summarize([float(getattr(score, name)) for score in scores])
        for name in ("dsc_auc", "nsd_auc", "dsc_final", "nsd_final")
    }


def summary(rows: Sequence[Row], settings: EvaluationSettings) -> dict[str, Any]:
    """Mean, std and median of every metric per click count, the spread across repeats, the clicks-curve AUC.

    Also the clicks of the final rows (0 for methods without clicks) and the inference seconds per case
    (all clicks of one repeat), for comparisons between methods.
    """
    by_clicks: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        by_clicks[int(row["clicks"])].append(row)
    result: dict[str, Any] = {
        "settings": asdict(settings),
        "cases": len({row["case"] for row in rows}),
        "case_ids": sorted({str(row["case"]) for row in rows}),  # what `sam3d report` compares runs on
        "by_clicks": {
            str(clicks): {metric: summarize([float(r[metric]) for r in group]) for metric in METRICS}
            for clicks, group in sorted(by_clicks.items())
        },
    }
    final = _final_rows(rows)
    per_repeat: dict[int, list[Row]] = defaultdict(list)
    for row in final:
        per_repeat[int(row["repeat"])].append(row)
    repeat_means = {
        metric: [summarize([float(r[metric]) for r in group])["mean"] for group in per_repeat.values()]
        for metric in METRICS
    }
    result["clicks"] = max((int(row["clicks"]) for row in final), default=None)
    seconds: dict[tuple[str, int], float] = defaultdict(float)
    for row in rows:
        seconds[(str(row["case"]), int(row["repeat"]))] += float(row["seconds"])
    result["seconds_per_case"] = statistics.fmean(seconds.values()) if seconds else None
    result["final"] = {metric: summarize([float(r[metric]) for r in final]) for metric in METRICS}
    steps = settings.refinement_clicks + 1
    result["click_auc"] = (
        {"steps": steps, **{metric: summarize(areas) for metric, areas in click_auc(rows, steps).items()}}
        if steps > 1 and settings.protocol != "cvpr25"
        else None  # one prediction per sequence: no curve; cvpr25 has its own areas
    )
    if settings.protocol == "cvpr25":
        result["cvpr25"] = cvpr25_summary(rows)
    result["across_repeats"] = {
        metric: {
            "mean": statistics.fmean(finite) if (finite := [v for v in values if v is not None]) else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "repeats": len(values),
        }
        for metric, values in repeat_means.items()
    }
    return result


def _final_rows(rows: Sequence[Row]) -> list[Row]:
    """The row after the last click of every (case, repeat)."""
    last: dict[tuple[str, int], Row] = {}
    for row in rows:
        key = (str(row["case"]), int(row["repeat"]))
        if key not in last or int(row["clicks"]) >= int(last[key]["clicks"]):
            last[key] = row
    return list(last.values())


def ranked_cases(rows: Sequence[Row]) -> dict[str, str]:
    """The best, median and worst case by final Dice (mean over repeats)."""
    dice: dict[str, list[float]] = defaultdict(list)
    for row in _final_rows(rows):
        dice[str(row["case"])].append(float(row["dice"]))
    order = sorted(dice, key=lambda case: statistics.fmean(dice[case]))
    if not order:
        return {}
    return {"best": order[-1], "median": order[len(order) // 2], "worst": order[0]}


def write_report(
    rows: Sequence[Row],
    pictures: Mapping[str, bytes],
    skipped: Mapping[str, str],
    settings: EvaluationSettings,
    folder: Path,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``cases.csv``, ``summary.json`` and ``{best,median,worst}_<case>.png`` into ``folder``.

    ``record`` (the method, its parameter counts, peak memory: see ``sam3d.callbacks.TestReport``) heads
    the summary.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cases.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["case", "repeat", "clicks", *METRICS, "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    result = {**(record or {}), **summary(rows, settings), "skipped": dict(skipped)}
    (folder / "summary.json").write_text(json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    for rank, case in ranked_cases(rows).items():
        if case in pictures:
            (folder / f"{rank}_{case}.png").write_bytes(pictures[case])
    return result


def aggregate_folds(summaries: list[str], output: str | None = None) -> str:
    """Aggregate the ``summary.json`` of several folds into one table (mean +- std across folds), as papers report.

    Example: ``sam3d aggregate-folds "[runs/sam3d/*/test/summary.json]" --output table.md``

    Args:
        summaries: The folds' ``summary.json`` files (from ``sam3d test``) as a list; glob patterns allowed.
        output: Also write the table (Markdown) to this file.

    Returns:
        The table.
    """
    files = [match for pattern in summaries for match in (sorted(glob.glob(pattern)) or [pattern])]
    if not files:
        raise Sam3dError("give the summary.json files of the folds to aggregate")
    fold_means: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        file = Path(path)
        if not file.is_file():
            raise Sam3dError(f"{file} does not exist; pass the summary.json files that `sam3d test` wrote")
        try:
            result = json.loads(file.read_text())
            by_clicks = result["by_clicks"]
        except (json.JSONDecodeError, KeyError) as error:
            raise Sam3dError(f"{file} is not a sam3d test summary: {error}") from error
        for clicks, metrics in by_clicks.items():
            for metric in METRICS:
                if metrics[metric]["mean"] is not None:
                    fold_means[clicks][metric].append(float(metrics[metric]["mean"]))
    lines = [
        f"| clicks | folds | {' | '.join(name.upper() if name != 'hd95' else 'HD95 (mm)' for name in METRICS)} |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for clicks in sorted(fold_means, key=int):
        cells = []
        for metric in METRICS:
            values = fold_means[clicks][metric]
            scale = 1.0 if metric == "hd95" else 100.0  # Dice and NSD in percent, as the paper
            mean = statistics.fmean(values) * scale if values else float("nan")
            std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
            cells.append(f"{mean:.2f} +- {std:.2f}")
        folds = max(len(v) for v in fold_means[clicks].values())
        lines.append(f"| {clicks} | {folds} | {' | '.join(cells)} |")
    table = "\n".join(lines)
    print(table)
    if output:
        Path(output).write_text(table + "\n")
    return table
