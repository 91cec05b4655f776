"""Several objects in `sam3d serve` (the API, no browser) and in `sam3d predict`: label map and per-object files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from serve_helpers import MagicWand, Page, dice, live_server, replay, two_lesion_phantom

from sam3d.callbacks import PredictionWriter
from sam3d.evaluation import EvaluationSettings


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """The two-lesion scan, its label map (1, 2) and the lesions' centres on the network grid."""
    return two_lesion_phantom(tmp_path_factory.mktemp("lesions"))


def _ids(state):
    return [(o["id"], o["name"], o["interactions"]) for o in state["objects"]]


def test_two_objects_each_click_to_its_own_undo_per_object_save_a_label_map(lesions, tmp_path):
    scan, label, (one, two) = lesions
    output = tmp_path / "out"
    with live_server(MagicWand(), [scan], output) as address:
        page = Page(address)
        opened = page("/api/open", {"index": 0})
        assert (_ids(opened), opened["selected"]) == ([(1, "object 1", 0)], 1)
        first = page("/api/click", {"point": one})
        added = page("/api/objects/add", {"name": "cyst"})
        assert (_ids(added), added["selected"]) == ([(1, "object 1", 1), (2, "cyst", 0)], 2)
        assert added["interactions"] == []
        assert added["mask"] is None
        second = page("/api/click", {"point": two})
        assert _ids(second) == [(1, "object 1", 1), (2, "cyst", 1)]
        assert [c["point"] for c in second["clicks"]] == [two]
        volumes = {o["id"]: o["volume_ml"] for o in second["objects"]}
        assert volumes[1] == pytest.approx(first["volume_ml"])
        assert volumes[2] == second["volume_ml"] > 0

        # a negative click and undo act on the selected object only
        page("/api/objects/select", {"id": 1})
        corrected = page("/api/click", {"point": [one[0], one[1], one[2] + 3], "positive": False})
        assert _ids(corrected) == [(1, "object 1", 2), (2, "cyst", 1)]
        assert corrected["volume_ml"] < first["volume_ml"]
        undone = page("/api/undo")
        assert _ids(undone) == [(1, "object 1", 1), (2, "cyst", 1)]
        assert undone["objects"] == second["objects"]

        page("/api/objects/rename", {"id": 1, "name": "tumour"})
        saved = page("/api/save")
        files = {
            kind: output / name
            for kind, name in [
                ("labels", "two_lesions_labels.nii.gz"),
                ("object-1", "two_lesions_object-1_tumour.nii.gz"),
                ("object-2", "two_lesions_object-2_cyst.nii.gz"),
                ("interactions", "two_lesions_interactions.json"),
            ]
        }
        assert saved["files"] == {kind: str(path) for kind, path in files.items()}
        assert [(o["id"], o["name"]) for o in saved["objects"]] == [(1, "tumour"), (2, "cyst")]
        assert page.request("/api/download/labels")[1] == files["labels"].read_bytes()
        assert "press Save first" in page.error("/api/download/mask")  # two objects: no single mask

    truth = np.asarray(nib.load(label).dataobj)
    labels = nib.load(files["labels"])
    np.testing.assert_allclose(labels.affine, nib.load(scan).affine)
    values = np.asarray(labels.dataobj)
    assert set(np.unique(values)) == {0, 1, 2}
    for value in (1, 2):
        assert dice(values == value, truth == value) > 0.6
        assert not ((values == value) & (truth == 3 - value)).any()  # never on the other lesion
        own = np.asarray(nib.load(files[f"object-{value}"]).dataobj)
        assert set(np.unique(own)) == {0, 1}
        np.testing.assert_array_equal(own.astype(bool), values == value)  # no overlap here
    written = json.loads(files["interactions"].read_text())["scans"][0]["interactions"]
    assert [e["object"] for e in written] == [{"id": 1, "name": "tumour"}, {"id": 2, "name": "cyst"}]


def test_deleting_keeps_the_ids_and_bad_object_requests_are_refused(lesions, tmp_path):
    scan, _, (one, two) = lesions
    with live_server(MagicWand(), [scan], tmp_path / "out") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        page("/api/click", {"point": one})
        page("/api/objects/add", {})
        page("/api/click", {"point": two})
        page("/api/objects/add", {"name": "third"})
        page("/api/objects/select", {"id": 2})
        deleted = page("/api/objects/delete", {"id": 2})
        assert (_ids(deleted), deleted["selected"]) == ([(1, "object 1", 1), (3, "third", 0)], 1)
        assert [o["mask"] is not None for o in deleted["objects"]] == [True, False]
        assert page("/api/objects/add", {})["objects"][1]["id"] == 2  # the smallest free id

        assert "no object 7" in page.error("/api/objects/select", {"id": 7})
        assert "integer from 1 to 255" in page.error("/api/objects/select", {"id": "1"})
        assert "integer from 1 to 255" in page.error("/api/objects/delete", {})
        for bad in ("../../etc/passwd", "a\\b", "", "x" * 65):
            assert "no '/' or other path characters" in page.error(
                "/api/objects/rename", {"id": 1, "name": bad}
            )
        assert "no '/'" in page.error("/api/objects/add", {"name": "c:/x"})
        for _ in range(252):
            page("/api/objects/add", {})
        assert "at most 255 objects" in page.error("/api/objects/add", {})
        for key in range(2, 256):
            page("/api/objects/delete", {"id": key})
        assert "only object" in page.error("/api/objects/delete", {"id": 1})
        state = page("/api/state")
        assert _ids(state) == [(1, "object 1", 1)]  # after all that, the first object is intact
        # one object left: Save writes today's single mask
        assert set(page("/api/save")["files"]) == {"mask", "interactions"}


def test_predict_replays_each_object_and_writes_the_label_map_and_one_mask_per_object(
    lesions, tmp_path, capsys
):
    scan, label, (one, two) = lesions
    net = MagicWand()
    with live_server(net, [scan], tmp_path / "page") as address:
        page = Page(address)
        page("/api/open", {"index": 0})
        page("/api/click", {"point": one})
        page("/api/objects/add", {"name": "second lesion"})
        page("/api/click", {"point": two})
        page("/api/click", {"point": [two[0], two[1], two[2] + 4], "positive": False})
        page("/api/objects/add", {})  # an object without interactions is not saved
        page("/api/save")
    shown = np.asarray(nib.load(tmp_path / "page" / "two_lesions_labels.nii.gz").dataobj)

    case, prediction = replay(net, [scan], tmp_path / "page" / "two_lesions_interactions.json")
    assert [(o.id, o.name, [[i.positive for i in step] for step in o.steps]) for o in case.objects] == [
        (1, "object 1", [[True]]),
        (2, "second lesion", [[True], [False]]),
    ]
    assert set(prediction["probabilities"]) == {1, 2}
    assert "probability" not in prediction
    writer = PredictionWriter(str(tmp_path / "predicted"))
    module = SimpleNamespace(evaluation=EvaluationSettings(), test_rows=[], test_pictures={}, test_skipped={})
    writer.write_on_batch_end(None, module, prediction, None, None, 0)  # type: ignore[arg-type]
    assert "2 objects (object 1" in capsys.readouterr().out

    written = sorted(p.name for p in (tmp_path / "predicted").iterdir())
    assert written == [
        "two_lesions_labels.nii.gz",
        "two_lesions_object-1_object-1.nii.gz",
        "two_lesions_object-2_second-lesion.nii.gz",
    ]
    labels = nib.load(tmp_path / "predicted" / "two_lesions_labels.nii.gz")
    source = nib.load(scan)
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), shown)  # the page's label map
    truth = np.asarray(nib.load(label).dataobj)
    second = np.asarray(
        nib.load(tmp_path / "predicted" / "two_lesions_object-2_second-lesion.nii.gz").dataobj
    )
    assert (second & (truth == 2)).sum() > 0.5 * (truth == 2).sum()
    assert not (second & (truth == 1)).any()
