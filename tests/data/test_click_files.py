import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from sam3d.data.errors import DatasetError
from sam3d.data.preprocessing import Preprocessing
from sam3d.data.scans import (
    Box,
    Click,
    PredictionCases,
    Scribble,
    clicks_to_network,
    interactions_to_network,
    load_label,
    load_scan,
    match_clicks,
    read_clicks,
    steps_of,
)
from sam3d.interaction import click_tensors

PREPROCESSING = Preprocessing((1.0, 1.0, 1.0), (-200.0, 300.0), 50.0, 100.0, (1,))


def load(path):
    return load_scan(path, PREPROCESSING)


def cases(root):
    return [(path, root / "labelsTr" / path.name) for path in sorted((root / "imagesTr").glob("*.nii.gz"))]


def at(volume, points):
    index = points.round().long()
    return volume[index[:, 0], index[:, 1], index[:, 2]]


def sample_voxels(label, inside, count, rng, margin_mm, spacing):
    """Voxels at least ``margin_mm`` inside (or outside) the label, in the file's (i, j, k) indices."""
    region = label if inside else ~label
    depth = ndimage.distance_transform_edt(region, sampling=spacing)
    candidates = np.argwhere(depth >= margin_mm)
    return candidates[rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)]


def check_clicks_land_where_the_file_says(image_path, label_path):
    scan = load(image_path)
    preprocessed = load_label(label_path, scan)
    label_file = nib.load(label_path)
    label = label_file.get_fdata() == 1
    rng = np.random.default_rng(0)
    spacing = label_file.header.get_zooms()
    tumour = sample_voxels(label, True, 40, rng, 1.5, spacing)
    background = sample_voxels(label, False, 40, rng, 1.5, spacing)
    voxels = np.concatenate([tumour, background])
    positive = [True] * len(tumour) + [False] * len(background)
    clicks = [Click(tuple(map(float, v)), "voxel", p) for v, p in zip(voxels, positive, strict=True)]
    points, labels = clicks_to_network(clicks, scan)
    assert points.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert points.shape == (len(voxels), 3)
    assert labels.tolist() == [int(p) for p in positive]
    assert at(preprocessed, points[: len(tumour)]).all()
    assert not at(preprocessed, points[len(tumour) :]).any()
    # The same places in world millimetres (RAS+ and LPS+).
    world = nib.affines.apply_affine(label_file.affine, voxels)
    ras = [Click(tuple(map(float, w)), "world", True) for w in world]
    np.testing.assert_allclose(clicks_to_network(ras, scan)[0], points, atol=1e-3)
    lps = [Click((-w[0], -w[1], float(w[2])), "world_lps", True) for w in world]
    np.testing.assert_allclose(clicks_to_network(lps, scan)[0], points, atol=1e-3)
    return scan


def test_clicks_on_every_phantom_orientation(synthetic_root):
    phantoms = cases(synthetic_root)
    orientations = {nib.aff2axcodes(nib.load(image_path).affine) for image_path, _ in phantoms}
    assert len(phantoms) == 6  # the session's phantoms, in axis orders and directions of their own
    assert len(orientations) >= 3
    for image_path, label_path in phantoms:
        check_clicks_land_where_the_file_says(image_path, label_path)


def test_clicks_on_real_ct(shared_ct_root):
    for image_path, label_path in cases(shared_ct_root)[:2]:
        check_clicks_land_where_the_file_says(image_path, label_path)


def test_itk_voxel_indices_and_lps_points(synthetic_root, tmp_path):
    image_nii, label_nii = cases(synthetic_root)[3]
    image_path = tmp_path / "scan.mha"
    itk = sitk.ReadImage(str(image_nii))
    sitk.WriteImage(itk, str(image_path))
    scan = load(image_path)
    preprocessed = load_label(label_nii, load(image_nii))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_nii))).transpose() == 1  # (i, j, k)
    index = sample_voxels(label, True, 10, np.random.default_rng(1), 1.5, itk.GetSpacing())
    points, _ = clicks_to_network([Click(tuple(map(float, i)), "voxel", True) for i in index], scan)
    assert at(preprocessed, points).all()
    physical = [itk.TransformIndexToPhysicalPoint([int(n) for n in i]) for i in index]
    lps, _ = clicks_to_network([Click(p, "world_lps", True) for p in physical], scan)
    np.testing.assert_allclose(lps, points, atol=1e-3)


def test_clicks_outside_the_scan_are_named_with_the_extent(synthetic_root):
    image_path = cases(synthetic_root)[0][0]
    scan = load(image_path)
    shape = nib.load(image_path).shape
    corners = [Click((0.0, 0.0, 0.0), "voxel", True), Click(tuple(n - 1.0 for n in shape), "voxel", True)]
    points, _ = clicks_to_network(corners, scan)
    assert ((points >= 0) & (points <= torch.tensor(scan.image.shape) - 1)).all()
    outside = Click((float(shape[0]), 3.0, 3.0), "voxel", True, "clicks.csv line 4")
    far = Click((0.0, 0.0, 5000.0), "world", False)
    with pytest.raises(DatasetError) as error:
        clicks_to_network([corners[0], outside, far], scan)
    message = str(error.value)
    assert "2 click(s)" in message
    assert str(image_path) in message
    assert f"({shape[0]}, 3, 3) in voxel space (clicks.csv line 4)" in message
    assert "(0, 0, 5000) in world space" in message
    assert f"voxels 0..{shape[0] - 1}, 0..{shape[1] - 1}, 0..{shape[2] - 1}" in message


def test_no_clicks_give_empty_tensors(synthetic_root):
    points, labels = clicks_to_network([], load(cases(synthetic_root)[0][0]))
    assert points.shape == (0, 3)
    assert labels.shape == (0,)


def test_read_csv(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(
        "scan,x,y,z,space,label,note\n"
        "case_1.nii.gz,10,20,30,voxel,positive,first\n"
        "case_1.nii.gz,1.5,-2,3,world,0,\n"
        "\n"
        " case_2 ,4,5,6,WORLD_LPS,Negative,\n"
    )
    clicks = read_clicks(path)
    assert list(clicks) == ["case_1.nii.gz", "case_2"]
    first, second = clicks["case_1.nii.gz"]
    assert first == Click((10.0, 20.0, 30.0), "voxel", True, "clicks.csv line 2")
    assert second.position == (1.5, -2.0, 3.0)
    assert (second.space, second.positive) == ("world", False)
    assert clicks["case_2"][0].space == "world_lps"
    assert not clicks["case_2"][0].positive


def test_read_json(tmp_path):
    path = tmp_path / "clicks.json"
    content = {
        "scans": [
            {
                "scan": "a.mha",
                "clicks": [
                    {"position": [1, 2, 3], "space": "voxel", "label": "positive"},
                    {"position": [1.5, 2, 3], "space": "world", "label": 0},
                ],
            },
            {"scan": "b", "clicks": [{"position": [0, 0, 0], "space": "voxel", "label": 1}]},
        ]
    }
    path.write_text(json.dumps(content))
    clicks = read_clicks(path)
    assert [c.positive for c in clicks["a.mha"]] == [True, False]
    assert clicks["a.mha"][1].position == (1.5, 2.0, 3.0)
    assert clicks["b"][0].where == "clicks.json scans[1].clicks[0]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scan,x,y,space,label\na,1,2,voxel,positive\n", "lacks the column"),
        ("scan,x,y,z,space,label\na,1,2,3,pixel,positive\n", "space must be one of"),
        ("scan,x,y,z,space,label\na,1,2,3,voxel,maybe\n", "label must be positive or negative"),
        ("scan,x,y,z,space,label\na,1,two,3,voxel,1\n", "three numbers"),
        ("scan,x,y,z,space,label\n,1,2,3,voxel,1\n", "scan is empty"),
        ("scan,x,y,z,space,label\n", "holds no click"),
    ],
)
def test_bad_csv_files_are_explained(tmp_path, text, message):
    path = tmp_path / "clicks.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        read_clicks(path)
    assert str(path) in str(error.value)


def test_every_bad_click_is_listed_with_its_line(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("scan,x,y,z,space,label\na,1,2,3,voxel,1\na,1,2,3,pixel,1\na,1,2,nan,voxel,1\n")
    with pytest.raises(DatasetError, match="2 invalid") as error:
        read_clicks(path)
    assert "clicks.csv line 3" in str(error.value)
    assert "clicks.csv line 4" in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"clicks": []}', '"scans"'),
        ('{"scans": [{"scan": "a"}]}', '"clicks"'),
        (
            '{"scans": [{"scan": "a", "clicks": [{"position": [1, 2], "space": "voxel", "label": 1}]}]}',
            "three",
        ),
        ('{"scans": [{"scan": "a", "clicks": [{"position": [1, 2, 3], "label": 1}]}]}', "space"),
        ('{"scans": [{"scan": "a", "clicks": [[1, 2, 3]]}]}', "a click must be"),
    ],
)
def test_bad_json_files_are_explained(tmp_path, content, message):
    path = tmp_path / "clicks.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_clicks(path)


def test_missing_or_unknown_clicks_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_clicks(tmp_path / "absent.csv")
    (tmp_path / "clicks.txt").write_text("scan,x,y,z,space,label\n")
    with pytest.raises(DatasetError, match=r"\.csv or \.json"):
        read_clicks(tmp_path / "clicks.txt")


def test_match_clicks_by_path_name_or_case_id(tmp_path):
    (tmp_path / "scans" / "other").mkdir(parents=True)
    scans = [
        tmp_path / "scans" / "a.nii.gz",
        tmp_path / "scans" / "b.mha",
        tmp_path / "scans" / "other" / "a.nii.gz",
    ]
    for scan in scans:
        scan.touch()
    clicks_file = tmp_path / "clicks.csv"
    click = Click((1.0, 2.0, 3.0), "voxel", True)
    clicks = {"scans/a.nii.gz": [click], "b": [click, click], "a": [click], "ghost.nii.gz": [click]}
    matched, problems = match_clicks(clicks, scans, clicks_file)
    assert matched == {scans[0]: [click], scans[1]: [click, click]}
    messages = [str(problem) for problem in problems]
    assert len(messages) == 2
    assert "'a'" in messages[0]
    assert "several" in messages[0]
    assert "ghost.nii.gz" in messages[1]
    assert "does not exist" in messages[1]
    assert str(clicks_file) in messages[1]


INTERACTIONS = {
    "scans": [
        {
            "scan": "a.mha",
            "clicks": [{"position": [1, 2, 3], "space": "voxel", "label": "positive"}],
            "interactions": [
                {"type": "box", "corners": [[4, 5, 6], [1, 2, 6]], "space": "world"},
                {"type": "click", "position": [1.5, 2, 3], "space": "world_lps", "label": 0},
                {"type": "scribble", "positions": [[1, 1, 1], [1, 2, 1]], "space": "voxel", "label": "neg"},
            ],
        },
        {"scan": "b", "interactions": [{"type": "box", "corners": [[0, 0, 0], [1, 1, 1]], "space": "voxel"}]},
    ]
}


def test_read_interactions_in_order_and_their_steps(tmp_path):
    path = tmp_path / "interactions.json"
    path.write_text(json.dumps(INTERACTIONS))
    entries = read_clicks(path)
    first, box, click, scribble = entries["a.mha"]
    assert first == Click((1.0, 2.0, 3.0), "voxel", True, "interactions.json scans[0].clicks[0]")
    assert box == Box(
        ((4.0, 5.0, 6.0), (1.0, 2.0, 6.0)), "world", "interactions.json scans[0].interactions[0]"
    )
    assert click == Click(
        (1.5, 2.0, 3.0), "world_lps", False, "interactions.json scans[0].interactions[1]", True
    )
    assert scribble == Scribble(
        ((1.0, 1.0, 1.0), (1.0, 2.0, 1.0)), "voxel", False, "interactions.json scans[0].interactions[2]"
    )
    # the plain clicks are one step, first; then one step per interaction, in file order
    assert steps_of(entries["a.mha"]) == [(first,), (box,), (click,), (scribble,)]
    assert [type(e) for e in entries["b"]] == [Box]


def test_old_clicks_files_stay_one_step_with_the_same_points(synthetic_root, tmp_path):
    image_path = cases(synthetic_root)[0][0]
    scan = load(image_path)
    path = tmp_path / "clicks.csv"
    path.write_text(
        f"scan,x,y,z,space,label\n{image_path.name},10,12,9,voxel,1\n{image_path.name},14,12,9,voxel,0\n"
    )
    clicks = read_clicks(path)[image_path.name]
    steps = interactions_to_network(clicks, scan)
    assert len(steps) == 1
    points, labels = clicks_to_network(clicks, scan)
    assert torch.equal(torch.cat([i.voxels for i in steps[0]]), points)
    assert [int(i.positive) for i in steps[0]] == labels.tolist()
    case = PredictionCases([image_path], path, PREPROCESSING)[0]
    assert len(case.steps) == 1
    case_points, case_labels = click_tensors(case.interactions)
    assert torch.equal(case_points, points)
    assert torch.equal(case_labels, labels)


def test_boxes_and_scribbles_map_onto_the_grid_in_every_space(synthetic_root):
    image_path = cases(synthetic_root)[2][0]
    scan = load(image_path)
    affine = nib.load(image_path).affine
    voxels = np.array(
        [[10.2, 14.0, 9.0], [18.0, 11.0, 9.0], [12.0, 12.0, 9.0], [12.0, 12.2, 9.0], [13, 12, 9]]
    )
    world = nib.affines.apply_affine(affine, voxels)
    lps = world * [-1, -1, 1]
    mapped = {}
    for space, positions in (("voxel", voxels), ("world", world), ("world_lps", lps)):
        rows = [tuple(map(float, p)) for p in positions]
        entries = [Box((rows[0], rows[1]), space), Scribble(tuple(rows[2:]), space, False)]
        mapped[space] = interactions_to_network(entries, scan)
    box, scribble = (step[0] for step in mapped["voxel"])
    # exactly as clicks map: the box spans its corners' rounded voxels, lowest to highest per axis
    corners, _ = clicks_to_network([Click(tuple(map(float, v)), "voxel", True) for v in voxels[:2]], scan)
    assert box.kind == "box"
    assert box.voxels.tolist() == [corners.round().amin(0).tolist(), corners.round().amax(0).tolist()]
    # a scribble's positions rounded to voxels, repeats dropped, in order
    points, _ = clicks_to_network([Click(tuple(map(float, v)), "voxel", True) for v in voxels[2:]], scan)
    rounded = points.round()
    assert torch.equal(rounded[0], rounded[1])  # 12.0 and 12.2 fall in one voxel
    assert (scribble.kind, scribble.positive) == ("scribble", False)
    assert scribble.voxels.tolist() == [rounded[0].tolist(), rounded[2].tolist()]
    for space in ("world", "world_lps"):
        for ours, theirs in zip(mapped[space], mapped["voxel"], strict=True):
            assert torch.equal(ours[0].voxels, theirs[0].voxels), space


def test_interactions_outside_the_scan_are_named_with_their_entry(synthetic_root, tmp_path):
    image_path = cases(synthetic_root)[0][0]
    shape = nib.load(image_path).shape
    content = {
        "scans": [
            {
                "scan": image_path.name,
                "interactions": [
                    {"type": "box", "corners": [[1, 1, 1], [shape[0] + 4, 2, 2]], "space": "voxel"},
                    {
                        "type": "scribble",
                        "positions": [[1, 1, 1], [0, 0, 5000]],
                        "space": "world",
                        "label": 1,
                    },
                    {"type": "click", "position": [2, 2, 2], "space": "voxel", "label": 1},
                ],
            }
        ]
    }
    path = tmp_path / "interactions.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError) as error:
        interactions_to_network(read_clicks(path)[image_path.name], load(image_path))
    message = str(error.value)
    assert "2 position(s)" in message
    assert str(image_path) in message
    assert "interactions.json scans[0].interactions[0]" in message
    assert f"position 1 ({shape[0] + 4}, 2, 2)" in message
    assert "interactions.json scans[0].interactions[1]" in message
    assert "interactions[2]" not in message
    case = PredictionCases([image_path], path, PREPROCESSING)[0]
    assert "interactions.json scans[0].interactions[0]" in case.reason


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([1, 2, 3], '"type" click, box or scribble'),
        ({"type": "lasso"}, "got 'lasso'"),
        ({"type": "box", "corners": [[1, 2, 3]], "space": "voxel"}, '"corners": two positions'),
        (
            {"type": "box", "corners": [[1, 2, 3], [1, 2]], "space": "voxel"},
            "each corner must be three numbers",
        ),
        ({"type": "box", "corners": [[1, 2, 3], [1, 2, 3]], "space": "mm"}, "space must be one of"),
        (
            {"type": "box", "corners": [[1, 2, 3], [1, 2, 3]], "space": "voxel", "label": 0},
            "must be positive",
        ),
        ({"type": "scribble", "positions": [], "space": "voxel", "label": 1}, '"positions": a list'),
        (
            {"type": "scribble", "positions": [[1, 2, "x"]], "space": "voxel", "label": 1},
            "each position must",
        ),
        (
            {"type": "scribble", "positions": [[1, 2, 3]], "space": "voxel"},
            "label must be positive or negative",
        ),
        (
            {"type": "click", "position": [1, 2], "space": "voxel", "label": 1},
            "position must be three numbers",
        ),
    ],
)
def test_bad_interactions_are_explained_with_their_entry(tmp_path, entry, message):
    path = tmp_path / "interactions.json"
    good = {"type": "click", "position": [1, 2, 3], "space": "voxel", "label": 1}
    path.write_text(json.dumps({"scans": [{"scan": "a", "interactions": [good, entry]}]}))
    with pytest.raises(DatasetError, match="1 invalid") as error:
        read_clicks(path)
    assert "interactions.json scans[0].interactions[1]: " in str(error.value)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_a_scan_entry_needs_clicks_or_interactions(tmp_path):
    path = tmp_path / "interactions.json"
    path.write_text(json.dumps({"scans": [{"scan": "a", "interactions": {"type": "click"}}]}))
    with pytest.raises(DatasetError, match='"clicks" or "interactions" \\(a list\\)'):
        read_clicks(path)
