"""Single scans for ``sam3d test`` and ``sam3d predict``: loading, clicks files, mapping results back to the file.

The click-to-mask path of ``sam3d predict``: :func:`read_clicks` and :func:`match_clicks` read the
clicks file, :func:`load_scan` preprocesses the scan, :func:`interactions_to_network` maps its clicks,
boxes and scribbles onto the network grid as steps, :class:`sam3d.interaction.InteractionSession`
replays them, and :func:`write_prediction` (:func:`to_source_grid` with :func:`write_like`) writes the
mask on the scan's own grid. A scan with several objects (:func:`objects_to_network`) gets one session
per object and :func:`write_objects`: a label map and one mask per object.
"""

from sam3d.data.scans.click_files import (
    Box,
    Click,
    Entry,
    ObjectEntries,
    ObjectSteps,
    Scribble,
    clicks_to_network,
    interactions_to_network,
    match_clicks,
    objects_of,
    objects_to_network,
    read_clicks,
    steps_of,
)
from sam3d.data.scans.evaluation_cases import EvaluationCase, EvaluationCases, SkippedCase
from sam3d.data.scans.loading import Scan, describe_grid, label_on_source_grid, load_label, load_scan
from sam3d.data.scans.prediction_cases import PredictionCase, PredictionCases, scan_files
from sam3d.data.scans.writing import (
    ObjectProbability,
    SourceObjects,
    WrittenObjects,
    WrittenPrediction,
    object_file_stem,
    objects_on_source_grid,
    to_source_grid,
    write_like,
    write_objects,
    write_prediction,
)

__all__ = [
    "Box",
    "Click",
    "Entry",
    "EvaluationCase",
    "EvaluationCases",
    "ObjectEntries",
    "ObjectProbability",
    "ObjectSteps",
    "PredictionCase",
    "PredictionCases",
    "Scan",
    "Scribble",
    "SkippedCase",
    "SourceObjects",
    "WrittenObjects",
    "WrittenPrediction",
    "clicks_to_network",
    "describe_grid",
    "interactions_to_network",
    "label_on_source_grid",
    "load_label",
    "load_scan",
    "match_clicks",
    "object_file_stem",
    "objects_of",
    "objects_on_source_grid",
    "objects_to_network",
    "read_clicks",
    "scan_files",
    "steps_of",
    "to_source_grid",
    "write_like",
    "write_objects",
    "write_prediction",
]
