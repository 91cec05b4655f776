import json
from pathlib import Path

import pytest

from sam3d.data.errors import DatasetError
from sam3d.data.splits import PARTS, SHIPPED_SPLITS, load_splits, make_kfold, save_splits

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "splits"
FOLD0 = {"kits": (209, 30, 61), "pancreas": (196, 28, 57), "lits": (83, 11, 24), "colon": (89, 11, 26)}


@pytest.mark.parametrize("dataset", sorted(FOLD0))
def test_shipped_splits_reproduce_the_reference_folds(dataset):
    splits = load_splits(SHIPPED_SPLITS / f"{dataset}.json")
    assert len(splits.folds) == 5
    assert tuple(len(splits.folds[0][part]) for part in PARTS) == FOLD0[dataset]
    for fold in splits.folds:
        ids = [{entry["case_id"] for entry in fold[part]} for part in PARTS]
        assert not (ids[0] & ids[1])
        assert not (ids[0] & ids[2])
        assert not (ids[1] & ids[2])


@pytest.mark.parametrize("dataset", sorted(FOLD0))
def test_shipped_splits_are_the_authors_folds(dataset):
    reference_file = REFERENCE / f"{dataset}.json"
    if not reference_file.is_file():
        pytest.skip(f"the authors' folds are not at {reference_file} (only beside the development checkout)")
    splits = load_splits(SHIPPED_SPLITS / f"{dataset}.json")
    reference = json.loads(reference_file.read_text())
    for ours, theirs in zip(splits.folds, reference["folds"], strict=True):
        for part in PARTS:
            assert [(e["case_id"], e["image"], e["label"]) for e in ours[part]] == [
                (case, *paths) for case, paths in theirs[part].items()
            ]


def test_make_kfold_tests_every_case_once_and_is_seeded():
    ids = [f"c{i}" for i in range(11)]
    folds = make_kfold(ids, num_folds=5, seed=1)
    assert sorted(c for fold in folds for c in fold["test"]) == sorted(ids)
    for fold in folds:
        assert sorted(fold["train"] + fold["val"] + fold["test"]) == sorted(ids)
        assert fold["val"]
    assert make_kfold(ids, 5, seed=1) == folds
    assert make_kfold(ids, 5, seed=2) != folds


def test_too_few_cases_for_folds_is_an_error():
    with pytest.raises(DatasetError, match="need at least 5 cases"):
        make_kfold(["a", "b", "c", "d"], num_folds=5)


def entry(case):
    return {"case_id": case, "image": f"{case}.nii", "label": f"{case}_seg.nii"}


def test_fold_out_of_range_and_empty_training_split(tmp_path):
    path = save_splits(tmp_path / "s.json", "x", "test", [{"train": [], "val": [entry("a")], "test": []}])
    splits = load_splits(path)
    with pytest.raises(DatasetError, match=r"fold 3 is out of range.*0\.\.0"):
        splits.fold(3)
    with pytest.raises(DatasetError, match="empty training split"):
        splits.fold(0)


def test_case_in_two_parts_and_malformed_files_are_rejected(tmp_path):
    path = save_splits(
        tmp_path / "s.json", "x", "t", [{"train": [entry("a")], "val": [entry("a")], "test": []}]
    )
    with pytest.raises(DatasetError, match="a: fold 0: in both train and val"):
        load_splits(path)
    (tmp_path / "bad.json").write_text('{"folds": []}')
    with pytest.raises(DatasetError, match="format"):
        load_splits(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="not found"):
        load_splits(tmp_path / "missing.json")
