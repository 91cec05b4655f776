"""Single scans for ``sam3d test`` and ``sam3d predict``: loading, clicks files, mapping results back to the file.

The click-to-mask path of ``sam3d predict``: :func:`read_clicks` and :func:`match_clicks` read the
clicks file, :func:`load_scan` preprocesses the scan, :func:`interactions_to_network` maps its clicks,
boxes and scribbles onto the network grid as steps, :class:`sam3d.interaction.InteractionSession`
replays them, and :func:`write_prediction` (:func:`to_source_grid` with :func:`write_like`) writes the
mask on the scan's own grid.
"""

from sam3d.data.scans.click_files import (
    Box,
    Click,
    Entry,
    Scribble,
    clicks_to_network,
    interactions_to_network,
    match_clicks,
    read_clicks,
    steps_of,
)
from sam3d.data.scans.evaluation_cases import EvaluationCase, EvaluationCases, SkippedCase
from sam3d.data.scans.loading import Scan, describe_grid, label_on_source_grid, load_label, load_scan
from sam3d.data.scans.prediction_cases import PredictionCase, PredictionCases, scan_files
from sam3d.data.scans.writing import WrittenPrediction, to_source_grid, write_like, write_prediction

__all__ = [
    "Box",
    "Click",
    "Entry",
    "EvaluationCase",
    "EvaluationCases",
    "PredictionCase",
    "PredictionCases",
    "Scan",
    "Scribble",
    "SkippedCase",
    "WrittenPrediction",
    "clicks_to_network",
    "describe_grid",
    "interactions_to_network",
    "label_on_source_grid",
    "load_label",
    "load_scan",
    "match_clicks",
    "read_clicks",
    "scan_files",
    "steps_of",
    "to_source_grid",
    "write_like",
    "write_prediction",
]
