"""`sam3d report`: the comparison of test runs equals the runs' own summaries; what summaries record."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_helpers import synthetic_cli_args

from sam3d.callbacks import ReportingTask, method_record, reporting_task
from sam3d.cli import main
from sam3d.evaluation import EvaluationSettings
from sam3d.module import VolumetricSamModule
from sam3d.reporting import summary


def _test_run(root: Path, workdir: Path, checkpoint: Path, *extra: str) -> Path:
    main(synthetic_cli_args("test", root, workdir, "--ckpt_path", str(checkpoint), *extra))
    return next(workdir.glob("runs/**/test"))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def test_report_of_two_test_runs_equals_their_summaries(synthetic_root, trained, tmp_path, capsys):
    _, spatial_checkpoint = trained  # synthetic.yaml: spatial adapters, every weight trains
    lora_dir = tmp_path / "lora-fit"
    lora_args = ("--model.adaptation", "lora", "--model.lora_rank", "2", "--model.freeze_sam", "true")
    main(synthetic_cli_args("fit", synthetic_root, lora_dir, *lora_args))
    assert "sam-lora-r2: " in capsys.readouterr().out  # the trainable parameters, printed at the start
    lora_checkpoint = next(lora_dir.glob("runs/**/checkpoints/last.ckpt"))
    folders = {
        "sam-spatial-unfrozen": _test_run(synthetic_root, tmp_path / "a", spatial_checkpoint),
        "sam-lora-r2": _test_run(
            synthetic_root, tmp_path / "b", lora_checkpoint, "--evaluation.refinement_clicks", "1"
        ),
    }
    summaries = {name: json.loads((f / "summary.json").read_text()) for name, f in folders.items()}
    main(["report", json.dumps([str(f) for f in folders.values()]), "--output", str(tmp_path / "report")])

    records = {row["method"]: row for row in _read_csv(tmp_path / "report" / "comparison.csv")}
    assert set(records) == set(summaries)
    for method, own in summaries.items():
        record, cases = records[method], _read_csv(folders[method] / "cases.csv")
        assert record["runs"] == "1"
        for metric in ("dice", "nsd", "hd95"):
            assert float(record[f"{metric}_mean"]) == own["final"][metric]["mean"]
            assert record[f"{metric}_std"] == ""  # one run: no spread over runs
        # the summary's own records against what the run did
        assert int(record["clicks"]) == own["clicks"] == max(int(row["clicks"]) for row in cases)
        repeats = {(row["case"], row["repeat"]) for row in cases}
        seconds = sum(float(row["seconds"]) for row in cases) / len(repeats)
        assert float(record["seconds_per_case_mean"]) == pytest.approx(seconds)
        assert int(record["trainable_parameters_mean"]) == own["trainable_parameters"]
        assert float(record["peak_memory_bytes_mean"]) == own["peak_memory_bytes"] > 0
        # the data it was tested on, for the report's check that runs compare like with like
        assert own["data"] == {"dataset": "msd", "root": str(synthetic_root.resolve()), "fold": 0} | {
            "split_file": None
        }
        assert own["case_ids"] == sorted({row["case"] for row in cases})
    assert summaries["sam-lora-r2"]["clicks"] == 2
    lora = VolumetricSamModule(
        variant="tiny", adaptation="lora", lora_rank=2, freeze_sam=True, click_mode="labelled"
    )  # configs/synthetic.yaml's click mode: the click-label embedding trains
    assert summaries["sam-lora-r2"]["trainable_parameters"] == sum(
        p.numel() for p in lora.parameters() if p.requires_grad
    )
    spatial = summaries["sam-spatial-unfrozen"]
    assert spatial["trainable_parameters"] == spatial["parameters"]  # freeze_sam: false trains everything
    table = (tmp_path / "report" / "comparison.md").read_text()
    dice = 100 * summaries["sam-lora-r2"]["final"]["dice"]["mean"]
    assert f"| sam-lora-r2 | 2 | 1 | {dice:.2f} |" in table
    assert (tmp_path / "report" / "comparison.png").read_bytes().startswith(b"\x89PNG")


def _write_summary(path: Path, dice: float, method: str | None, **record: object) -> Path:
    rows = [
        {"case": f"c{i}", "repeat": 0, "clicks": clicks, "dice": dice * clicks / 2 + 0.01 * i, "nsd": 0.5}
        | {"hd95": 3.0, "seconds": 0.5}
        for i in range(3)
        for clicks in (1, 2)
    ]
    result = summary(rows, EvaluationSettings(refinement_clicks=1)) | record
    if method is not None:
        result["method"] = method
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


def test_runs_of_one_method_give_mean_and_sample_std(tmp_path):
    from sam3d.comparison import report

    for fold, dice in enumerate((0.6, 0.8)):
        _write_summary(tmp_path / f"runs/a{fold}/test/summary.json", dice, "a", trainable_parameters=10)
    _write_summary(tmp_path / "runs/old/test/summary.json", 0.5, None)  # no method: named after its folder
    table = report(str(tmp_path / "runs"), output=str(tmp_path / "out"))
    records = {row["method"]: row for row in _read_csv(tmp_path / "out" / "comparison.csv")}
    finals = [statistics.fmean([d + 0.01 * i for i in range(3)]) for d in (0.6, 0.8)]
    assert float(records["a"]["dice_mean"]) == pytest.approx(statistics.fmean(finals))
    assert float(records["a"]["dice_std"]) == pytest.approx(statistics.stdev(finals))
    assert records["a"]["runs"] == "2"
    assert records["a"]["trainable_parameters_mean"] == "10"
    assert float(records["a"]["seconds_per_case_mean"]) == 1.0  # two clicks of 0.5 s
    assert records["old"]["trainable_parameters_mean"] == ""
    assert "| old | 2 | 1 | 51.00 | 50.00 | 3.00 | n/a | n/a | 1.00 |" in table
    assert f"| a | 2 | 2 | {100 * statistics.fmean(finals):.2f} ± 14.14 |" in table


def _data(dataset: str = "kits", root: str = "/data/kits", fold: int = 0) -> dict[str, object]:
    return {"dataset": dataset, "root": root, "fold": fold, "split_file": None}


def test_report_warns_when_pooled_runs_were_tested_on_different_data(tmp_path, capsys):
    from sam3d.comparison import report

    _write_summary(tmp_path / "a0.json", 0.6, "a", data=_data(fold=0))
    _write_summary(tmp_path / "a1.json", 0.7, "a", data=_data("lits", "/data/lits", fold=1))
    _write_summary(tmp_path / "b0.json", 0.6, "b", data=_data(root="/elsewhere/kits"))
    _write_summary(tmp_path / "b1.json", 0.6, "b", data=_data(), case_ids=["c0", "c1", "c2", "c9"])
    files = [str(tmp_path / f"{run}.json") for run in ("a0", "a1", "b0", "b1")]
    report(files, output=str(tmp_path / "out"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sam3d: warning: ")]
    assert warnings == [
        "sam3d: warning: a (2 clicks) pools runs tested on different datasets: kits, lits",
        "sam3d: warning: a (2 clicks) pools runs tested on different data folders: /data/kits, /data/lits",
        "sam3d: warning: b (2 clicks) pools runs tested on different data folders: /data/kits, /elsewhere/kits",
        (
            "sam3d: warning: the methods were not tested on the same cases (a (2 clicks): 3 cases (1 missing); "
            "b (2 clicks): 4 cases of 4); compare runs of the same folds and split"
        ),
    ]
    assert (tmp_path / "out" / "comparison.md").read_text().count("**Warning:**") == 4


def test_report_pools_folds_of_the_same_data_without_a_warning(tmp_path, capsys):
    from sam3d.comparison import report

    for method in ("a", "b"):
        for fold, cases in enumerate((["c0", "c1", "c2"], ["c3", "c4", "c5"])):
            path = tmp_path / f"{method}{fold}" / "summary.json"
            _write_summary(path, 0.6, method, data=_data(fold=fold), case_ids=cases)
    report(str(tmp_path), output=str(tmp_path / "out"))
    assert "sam3d: warning" not in capsys.readouterr().err
    assert "**Warning:**" not in (tmp_path / "out" / "comparison.md").read_text()


def test_report_says_when_summaries_do_not_record_their_data(tmp_path, capsys):
    from sam3d.comparison import report

    older = _write_summary(tmp_path / "old.json", 0.6, "a")
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "case_ids"}))
    _write_summary(tmp_path / "new.json", 0.6, "b", data=_data())
    report([str(older), str(tmp_path / "new.json")], output=str(tmp_path / "out"))
    assert "1 of 2 runs do not record the cases they were tested on" in capsys.readouterr().err


def test_the_dice_axes_span_0_to_100_percent(tmp_path):
    from sam3d.comparison import comparison_figure, csv_record, group_runs, read_run

    paths = [_write_summary(tmp_path / f"{m}.json", d, m) for m, d in (("a", 0.80), ("b", 0.81))]
    paths.append(_write_summary(tmp_path / "c.json", 0.805, "c", clicks=0))  # a method without clicks
    rows = group_runs([read_run(path) for path in paths])
    figure = comparison_figure(rows, [csv_record(row) for row in rows])
    assert [axes.get_ylim() for axes in figure.axes] == [(0.0, 100.0), (0.0, 100.0)]


def test_data_record_names_the_dataset_folder_and_fold(tmp_path):
    from sam3d.callbacks import data_record
    from sam3d.data import VolumeDataModule

    record = data_record(VolumeDataModule(root=tmp_path, dataset="kits", fold=2))
    assert record == {
        "data": {"dataset": "kits", "root": str(tmp_path.resolve()), "fold": 2, "split_file": None}
    }
    assert data_record(object()) == {}


def test_report_logs_to_an_open_wandb_run(tmp_path, monkeypatch):
    import wandb

    from sam3d.comparison import report

    logged = []

    class Run:
        def log(self, data):
            logged.append(data)

    _write_summary(tmp_path / "s.json", 0.7, "a")
    monkeypatch.setattr(wandb, "run", Run())
    report(str(tmp_path / "s.json"), output=str(tmp_path / "out"))
    assert set(logged[0]) == {"comparison/table", "comparison/figure"}
    assert logged[0]["comparison/table"].get_column("method") == ["a"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("{}", "is not a summary of `sam3d test`"), ("{x", "is not a summary")],
)
def test_bad_inputs_are_messages(tmp_path, capsys, content, message):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(path), "--output", str(tmp_path / "out")])
    assert message in str(exit_info.value.code)


def test_method_record_of_any_lightning_module():
    module = L.LightningModule()
    module.layer = torch.nn.Linear(3, 2)
    module.layer.bias.requires_grad_(False)
    assert method_record(module) == {"method": "LightningModule", "trainable_parameters": 6, "parameters": 8}


def test_the_report_callbacks_read_any_task_with_the_reporting_interface():
    task = VolumetricSamModule(variant="tiny")
    assert isinstance(task, ReportingTask)
    assert reporting_task(task) is task
    with pytest.raises(
        TypeError, match="LightningModule has no evaluation, test_rows, test_pictures, test_skipped"
    ):
        reporting_task(L.LightningModule())
