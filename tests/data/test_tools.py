from sam3d.data.splits import load_splits
from sam3d.data.tools import UTILITIES, dataset_stats, make_splits, make_synthetic


def test_utilities_are_registered_by_subcommand_name():
    assert set(UTILITIES) == {
        "make-splits",
        "dataset-stats",
        "check-dataset",
        "make-synthetic",
        "make-lits117",
        "export-nnunet",
    }
    assert all(fn.__doc__ and "Args:" in fn.__doc__ for fn in UTILITIES.values())


def test_make_splits_writes_a_loadable_seeded_split(tmp_path, synthetic_root, capsys):
    path = make_splits(str(synthetic_root), str(tmp_path / "s.json"), "msd", num_folds=3, seed=1)
    splits = load_splits(path)
    assert len(splits.folds) == 3
    assert "3 folds of 6 cases" in capsys.readouterr().out
    assert (synthetic_root / splits.folds[0]["train"][0]["image"]).is_file()
    assert (
        load_splits(make_splits(str(synthetic_root), str(tmp_path / "t.json"), "msd", 3, seed=1)).folds
        == splits.folds
    )


def test_dataset_stats_of_synthetic_lesions(tmp_path, synthetic_root):
    stats = dataset_stats(str(synthetic_root), "msd", spacing=2.0)
    low, high = stats["intensity_window"]
    # Lesions are organ (55-70 HU) + 20-40 HU with noise: the window brackets that range.
    assert 0 < low < 80 < high < 160
    assert low < stats["mean"] < high
    assert 5 < stats["std"] < 40


def test_make_synthetic_and_check_dataset_agree(tmp_path, capsys):
    root = make_synthetic(str(tmp_path / "syn"), num_cases=2, seed=4)
    assert UTILITIES["check-dataset"](root, "msd") == 2
    assert "all 2 cases are usable" in capsys.readouterr().out


def test_the_cli_runs_the_data_utilities(tmp_path, capsys):
    from sam3d.cli import main

    main(["make-synthetic", str(tmp_path / "cli"), "--num_cases", "1"])
    assert (tmp_path / "cli" / "dataset.json").is_file()
    main(["check-dataset", str(tmp_path / "cli"), "--dataset", "msd"])
    assert "all 1 cases are usable" in capsys.readouterr().out
