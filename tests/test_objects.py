"""Several objects on one volume (sam3d.objects) and in clicks files (objects in sam3d.data.scans.click_files)."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import PREPROCESSING, MagicWand, two_lesion_phantom

from sam3d.data.errors import DatasetError
from sam3d.data.scans import interactions_to_network, load_scan, objects_of, objects_to_network, read_clicks
from sam3d.errors import Sam3dError
from sam3d.objects import MAX_OBJECTS, ObjectSessions, check_object_name, label_map


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """The two-lesion scan loaded on the network grid, its label file and the lesions' centres."""
    scan_path, label_path, centres = two_lesion_phantom(tmp_path_factory.mktemp("lesions"))
    return load_scan(scan_path, PREPROCESSING), label_path, centres


def test_label_map_gives_overlaps_to_the_more_probable_object_and_ties_to_the_lower_id():
    first = torch.tensor([0.9, 0.6, 0.7, 0.2, 0.5])
    second = torch.tensor([0.1, 0.8, 0.7, 0.3, 0.5])
    labels = label_map([(1, first), (4, second)], threshold=0.5)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [1, 4, 1, 0, 0]  # 0.5 is not above the threshold
    with pytest.raises(ValueError, match="shape"):
        label_map([(1, first), (2, torch.zeros(3))], 0.5)


def test_objects_share_one_encoder_keep_their_own_interactions_and_make_one_label_map(lesions):
    scan, _, (one, two) = lesions
    net = MagicWand()
    objects = ObjectSessions(net, scan.image)
    with pytest.raises(Sam3dError, match="no object yet"):
        objects.session.add_click(one)
    first = objects.add("tumour")
    objects.session.add_click(one)
    second = objects.add()
    assert (first.id, second.id, second.name) == (1, 2, "object 2")
    assert objects.selected is second
    objects.session.add_click(two)
    assert first.session.encoder is second.session.encoder is objects.encoder
    assert len(first.session.interactions) == len(second.session.interactions) == 1
    labels = objects.label_map()
    assert set(labels.unique().tolist()) == {0, 1, 2}
    assert labels[tuple(one)] == 1
    assert labels[tuple(two)] == 2
    assert torch.equal(labels == 1, first.session.probability > 0.5)

    objects.select(1)
    objects.session.undo()
    assert not first.session.interactions
    assert len(second.session.interactions) == 1
    assert set(objects.label_map().unique().tolist()) == {0, 2}


def test_ids_stay_put_on_delete_and_bad_ids_and_names_are_refused(lesions):
    scan, _, _ = lesions
    objects = ObjectSessions(MagicWand(), scan.image)
    for _ in range(3):
        objects.add()
    objects.delete(2)
    assert [o.id for o in objects.objects] == [1, 3]
    assert objects.selected.id == 3  # the deleted one was not selected
    objects.select(3)
    objects.delete(3)
    assert objects.selected.id == 1  # the one before the deleted
    assert objects.add().id == 2  # the smallest free id
    objects.rename(2, "  left kidney ")
    assert objects.get(2).name == "left kidney"
    for bad in ("../up", "a/b", "", ".hidden", "x" * 65, "tab\there", 7):
        with pytest.raises(Sam3dError, match="object name"):
            objects.rename(2, bad)
    for bad in (0, 256, "2", True, None, 1.5):
        with pytest.raises(Sam3dError, match="integer from 1 to 255"):
            objects.select(bad)
    with pytest.raises(Sam3dError, match="no object 9"):
        objects.delete(9)
    with pytest.raises(Sam3dError, match="exists already"):
        objects.add(object_id=2)
    objects.delete(2)
    with pytest.raises(Sam3dError, match="only object"):
        objects.delete(1)
    assert check_object_name("Läsion 2.b") == "Läsion 2.b"


def test_at_most_255_objects(lesions):
    scan, _, _ = lesions
    objects = ObjectSessions(MagicWand(), scan.image)
    for _ in range(MAX_OBJECTS):
        objects.add()
    with pytest.raises(Sam3dError, match="at most 255 objects"):
        objects.add()


def _click(position, **extra):
    return {"type": "click", "position": position, "space": "voxel", "label": "positive", **extra}


def test_a_file_without_objects_is_object_1_and_objects_group_in_file_order(lesions, tmp_path):
    scan, _, _ = lesions
    plain = tmp_path / "plain.json"
    plain.write_text(
        json.dumps({"scans": [{"scan": scan.path.name, "interactions": [_click([20, 24, 16])]}]})
    )
    entries = read_clicks(plain)[scan.path.name]
    (only,) = objects_to_network(entries, scan)
    assert (only.id, only.name, len(only.steps)) == (1, "object 1", 1)
    (step,) = interactions_to_network(entries, scan)
    assert step[0].voxels.tolist() == only.steps[0][0].voxels.tolist() == [[16.0, 24.0, 20.0]]

    several = tmp_path / "several.json"
    items = [
        _click([20, 24, 16], object={"id": 2, "name": "cyst"}),
        _click([40, 38, 20], object=1),
        _click([21, 24, 16], object={"id": 2}),
    ]
    several.write_text(json.dumps({"scans": [{"scan": scan.path.name, "interactions": items}]}))
    entries = read_clicks(several)[scan.path.name]
    objects = objects_to_network(entries, scan)
    assert [(o.id, o.name, len(o.steps)) for o in objects] == [(1, "object 1", 1), (2, "cyst", 2)]
    with pytest.raises(DatasetError, match="several objects"):
        interactions_to_network(entries, scan)


def test_bad_objects_in_a_clicks_file_are_listed_with_their_place(lesions, tmp_path):
    scan, _, _ = lesions
    path = tmp_path / "bad.json"
    items = [
        _click([20, 24, 16], object={"id": 2, "name": "a"}),
        _click([20, 24, 16], object={"id": 2, "name": "b"}),
        _click([20, 24, 16], object={"id": 300}),
        _click([20, 24, 16], object={"id": 3, "name": "../x"}),
    ]
    path.write_text(json.dumps({"scans": [{"scan": scan.path.name, "interactions": items}]}))
    with pytest.raises(DatasetError) as error:
        read_clicks(path)
    message = str(error.value)
    assert "interactions[1]: object 2 is named 'b' here and 'a' before" in message
    assert "interactions[2]: an object id is an integer from 1 to 255" in message
    assert "interactions[3]: an object name" in message


def test_a_csv_may_name_objects_in_optional_columns(lesions, tmp_path):
    scan, _, _ = lesions
    path = tmp_path / "clicks.csv"
    path.write_text(
        "scan,x,y,z,space,label,object,object_name\n"
        f"{scan.path.name},20,24,16,voxel,positive,,\n"
        f"{scan.path.name},40,38,20,voxel,positive,2,cyst\n"
        f"{scan.path.name},41,38,20,voxel,negative,2,\n"
    )
    grouped, errors = objects_of(read_clicks(path)[scan.path.name])
    assert not errors
    assert [(o.id, o.name, [e.positive for e in o.entries]) for o in grouped] == [
        (1, "object 1", [True]),
        (2, "cyst", [True, False]),
    ]
    path.write_text(f"scan,x,y,z,space,label,object\n{scan.path.name},20,24,16,voxel,positive,two\n")
    with pytest.raises(DatasetError, match=r"clicks\.csv line 2: object must be an integer id"):
        read_clicks(path)
