"""The ``sam3d`` command: configs, bad input, fit/validate, resume after a crash, bf16."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml
from cli_helpers import SYNTHETIC_CONFIG, synthetic_cli_args

from sam3d.cli import UTILITIES, Sam3dCLI, main
from sam3d.console import SUBCOMMANDS, UTILITY_NAMES
from sam3d.data.clicks import ClickMode
from sam3d.evaluation import EvaluationProtocol
from sam3d.models.config import ClickEncoding

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASET_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))
PROMPT_CONFIGS = sorted(p.name for p in (CONFIGS / "prompts").glob("*.yaml"))


def _fit_args(root: Path, workdir: Path, *extra: str) -> list[str]:
    return synthetic_cli_args("fit", root, workdir, *extra)


def _error_of(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    captured = capsys.readouterr()
    return f"{exit_info.value.code}\n{captured.err}\n{captured.out}"


@pytest.mark.parametrize("config", DATASET_CONFIGS)
def test_every_config_parses(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / config), "--data.root", str(tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    assert "data:" in capsys.readouterr().out


@pytest.mark.parametrize("overlay", PROMPT_CONFIGS)
def test_every_prompt_overlay_parses_and_builds_its_network(overlay, tmp_path, capsys):
    from sam3d.module import VolumetricSamModule

    settings = yaml.safe_load((CONFIGS / "prompts" / overlay).read_text())
    assert set(settings) == {"model"}  # network settings only
    # After the clicks overlay, as their headers say: dense prompts need its simulated user.
    interactive = str(CONFIGS / "clicks" / "interactive.yaml")
    args = ["fit", "-c", str(SYNTHETIC_CONFIG), "-c", interactive, "-c", str(CONFIGS / "prompts" / overlay)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--data.root", str(tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    for key, value in settings["model"].items():
        assert printed[key] == value, key
    config = VolumetricSamModule(variant="tiny", **settings["model"]).net.config
    assert config.dense_prompts == tuple(settings["model"].get("dense_prompts", ()))
    assert config.click_encoding == settings["model"].get("click_encoding", "gaussian")


def test_a_trainer_without_clicks_refuses_a_prompt_overlay(tmp_path, capsys):
    automatic = str(CONFIGS / "automatic" / "sam.yaml")
    overlay = str(CONFIGS / "prompts" / "distance_clicks.yaml")
    args = ["fit", "-c", str(SYNTHETIC_CONFIG), "-c", automatic, "-c", overlay]
    message = _error_of([*args, "--data.root", str(tmp_path), "--print_config"], capsys)
    assert "asks for clicks: model.click_" in message  # click_maps or click_encoding, whichever comes first
    assert "prompts/*.yaml overlay" in message


def test_the_dense_prompt_overlays_are_the_four_documented_ones():
    assert PROMPT_CONFIGS == ["all.yaml", "box.yaml", "distance_clicks.yaml", "mask.yaml", "scribble.yaml"]


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_dense_prompts_without_the_interactive_click_mode_are_refused(
    subcommand, synthetic_root, tmp_path, capsys
):
    # configs/synthetic.yaml trains labelled clicks: no simulated user would draw the box.
    args = synthetic_cli_args(
        subcommand, synthetic_root, tmp_path, "-c", str(CONFIGS / "prompts" / "box.yaml")
    )
    message = _error_of(args, capsys)
    assert "model.dense_prompts ['box', 'mask'] with data.click_mode labelled" in message
    assert "-c clicks/interactive.yaml" in message
    assert not (tmp_path / "cache").exists()  # refused before the data was touched


def test_fit_with_dense_prompts_trains_their_projection(synthetic_root, tmp_path):
    overlays = [
        "-c",
        str(CONFIGS / "clicks" / "interactive.yaml"),
        "-c",
        str(CONFIGS / "prompts" / "all.yaml"),
    ]
    args = [*overlays, "--trainer.logger", "false", "--trainer.limit_train_batches", "4"]
    main(_fit_args(synthetic_root, tmp_path, *args, "--trainer.limit_val_batches", "1"))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["dense_prompts"] == ["box", "scribble", "mask"]
    # Zero-initialised: it moved only if some step fed it a prompt (the previous mask feeds every step).
    assert checkpoint["state_dict"]["net.prompt_encoder.dense_prompts.project.weight"].abs().sum() > 0


def test_dataset_configs_write_out_the_paper_preprocessing():
    from sam3d.data.catalog import PRESETS

    for name, preset in PRESETS.items():
        data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["data"]
        labels = data["target_label"] if isinstance(data["target_label"], list) else [data["target_label"]]
        assert tuple(labels) == preset.target_labels, name
        assert tuple(data["intensity_window"]) == preset.window, name
        assert (data["mean"], data["std"]) == (preset.mean, preset.std), name


def test_run_defaults_compose_with_a_dataset_config_and_the_command_line(tmp_path, capsys):
    args = ["fit", "-c", str(CONFIGS / "kits.yaml"), "--data.root", str(tmp_path)]
    extra = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/dice", "--print_config"]
    with pytest.raises(SystemExit):
        main([*args, *extra])
    printed = yaml.safe_load(capsys.readouterr().out)
    callbacks = [callback["class_path"].rsplit(".", 1)[1] for callback in printed["trainer"]["callbacks"]]
    assert callbacks == [
        "ModelCheckpoint",
        "ModelCheckpoint",
        "LearningRateMonitor",
        "RichProgressBar",
        "ValidationSlices",
        "EarlyStopping",
    ]
    logger = printed["trainer"]["logger"]
    assert logger["class_path"].endswith("WandbLogger")
    assert (logger["init_args"]["name"], logger["init_args"]["save_dir"]) == ("kits-fold0", "runs")
    assert (printed["trainer"]["max_epochs"], printed["trainer"]["gradient_clip_val"]) == (500, 1.0)
    assert "optimizer" not in printed
    assert "lr_scheduler" not in printed
    assert "threshold" not in printed["prediction"]


def test_optimizer_options_are_not_offered(capsys):
    message = _error_of(
        ["fit", "-c", str(CONFIGS / "kits.yaml"), "--data.root", "x", "--optimizer", "Adam"], capsys
    )
    assert "optimizer" in message


def test_fit_without_a_logger_keeps_its_run_under_the_root_dir(synthetic_root, tmp_path, capfd):
    main(_fit_args(synthetic_root, tmp_path, "--trainer.logger", "false"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "config.yaml").is_file()
    assert list((tmp_path / "pictures").glob("val_epoch*.png"))
    captured = capfd.readouterr()
    assert "Tip:" not in captured.out + captured.err  # Lightning's promotional tips are silenced


def test_ddp_bf16_overlay_composes(tmp_path, capsys):
    args = ["fit", "-c", str(CONFIGS / "kits.yaml"), "-c", str(CONFIGS / "trainer" / "ddp_bf16.yaml")]
    with pytest.raises(SystemExit):
        main([*args, "--data.root", str(tmp_path), "--print_config"])
    printed = capsys.readouterr().out
    assert "precision: bf16-mixed" in printed
    assert "strategy: ddp" in printed
    assert "use_distributed_sampler: false" in printed
    assert "variant: vit_b" in printed


def test_config_names_a_shipped_config_unless_such_a_file_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", "kits.yaml", "--config=configs/trainer/ddp_bf16.yaml", "--data.root", "x"]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["data"]["dataset"], printed["trainer"]["strategy"]) == ("kits", "ddp")
    (tmp_path / "kits.yaml").write_text("data:\n  dataset: lits\n")
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["data"]["dataset"] == "lits"


def test_help_and_version_from_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "sam3d", "--help"], capture_output=True, text=True, check=True
    )
    assert "fit" in result.stdout
    assert "check-dataset" in result.stdout
    version = subprocess.run(
        [sys.executable, "-m", "sam3d", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip().endswith("0.1.0")


def test_version_and_help_answer_without_torch_or_lightning():
    code = (
        "import sys; from sam3d.console import main; main(['--version']); main(['--help']); "
        "print('loaded:', sorted(m for m in ('torch', 'lightning', 'monai', 'torchio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("sam3d 0.1.0\n")
    assert "loaded: []" in result.stdout
    for name in [*Sam3dCLI.subcommands(), *UTILITIES]:  # the light help names what the full CLI runs
        assert name in result.stdout


def test_the_light_help_lists_the_subcommands_and_utilities_of_the_cli():
    assert list(SUBCOMMANDS) == list(Sam3dCLI.subcommands())
    assert list(UTILITY_NAMES) == list(UTILITIES), "add a new utility's name to sam3d.console.UTILITY_NAMES"


def _short_error(args: list[str], capsys) -> str:
    """The error of a refused command line: exit status 2, a line or two, each a ``sam3d: error:``."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("Seed set")]
    assert 1 <= len(lines) <= 2, err
    assert all(line.startswith("sam3d: error: ") for line in lines), err
    assert "--help` lists the" in lines[-1]
    return " ".join(lines)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--data.clik_mode", "reference"],
            "unknown option --data.clik_mode; did you mean --data.click_mode?",
        ),
        (
            ["--trainer.max_epochz", "2"],
            "unknown option --trainer.max_epochz; did you mean --trainer.max_epochs?",
        ),
        (["--modle.lr", "0.1"], "unknown option --modle.lr; did you mean --model.lr?"),
        (["--model.lrr", "0.1"], "has no option model.lrr; did you mean --model.lr?"),
        (["--ckpt_pth", "x"], "unknown option --ckpt_pth; did you mean --ckpt_path?"),
    ],
)
def test_a_misspelt_option_is_one_line_with_the_closest_option(options, expected, capsys):
    message = _short_error(["fit", "-c", str(SYNTHETIC_CONFIG), "--data.root", "x", *options], capsys)
    assert expected in message
    assert "`sam3d fit --help`" in message


def test_a_misspelt_config_key_is_one_line_with_the_closest_key(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("data:\n  clik_mode: labelled\n")
    message = _short_error(
        ["fit", "-c", str(SYNTHETIC_CONFIG), "-c", str(config), "--data.root", "x"], capsys
    )
    assert "config key data.clik_mode is not an option of sam3d fit; did you mean data.click_mode?" in message


@pytest.mark.parametrize(
    ("subcommand", "option", "allowed"),
    [
        ("fit", "--data.click_mode", get_args(ClickMode)),
        ("test", "--evaluation.protocol", get_args(EvaluationProtocol)),
        ("fit", "--model.click_encoding", get_args(ClickEncoding)),  # an option of the model's class
        ("predict", "--prediction.probabilities", ("true", "false")),
    ],
)
def test_a_value_that_is_not_allowed_names_the_allowed_values(subcommand, option, allowed, capsys):
    args = [subcommand, "-c", str(SYNTHETIC_CONFIG), "--data.root", "x", option, "bogus"]
    message = _short_error(args, capsys)
    assert f"{option} bogus: not an allowed value; allowed values: {', '.join(allowed)} (" in message


def test_a_misspelt_subcommand_names_the_closest_one(capsys):
    message = _short_error(["reprot", "runs"], capsys)
    assert "unknown subcommand 'reprot'; did you mean report?" in message


def test_a_misspelt_option_of_a_utility_names_the_closest_one(tmp_path, capsys):
    message = _short_error(["report", str(tmp_path), "--outptu", str(tmp_path / "out")], capsys)
    assert (
        "unknown option --outptu; did you mean --output? (`sam3d report --help` lists the options)" in message
    )


def test_fit_help_shows_sam3d_options_before_the_trainer_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert len(help_text.split("\n\n")[0].splitlines()) <= 2  # a short usage, not every option
    order = [
        help_text.index(f"\n  --{option}")
        for option in ("data.root", "evaluation.protocol", "trainer.accelerator")
    ]
    assert order == sorted(order)
    assert help_text.index("--model.help") < order[-1]


def test_the_predict_clicks_help_names_the_clicks_file_columns(capsys):
    from sam3d.data.scans.click_files import _CSV_COLUMNS, _SPACES

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = capsys.readouterr().out
    start = help_text.index("\n  --data.predict_clicks")
    entry = " ".join(help_text[start : help_text.index("\n  --", start + 1)].split())
    columns = entry[entry.index("CSV") : entry.index("JSON")]
    for word in (*_CSV_COLUMNS, "object", "object_name", *_SPACES, "positive", "negative"):
        assert f" {word}" in columns, word
    assert '"scans"' in entry
    assert "interactions" in entry


def test_missing_data_root(capsys):
    assert "data.root" in _error_of(["fit", "-c", str(CONFIGS / "kits.yaml")], capsys)


def test_misspelled_config_key(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  varaint: tiny\n")
    message = _error_of(
        ["fit", "-c", str(CONFIGS / "kits.yaml"), "-c", str(config), "--data.root", "x"], capsys
    )
    assert "varaint" in message


def test_value_of_the_wrong_type(capsys):
    message = _error_of(
        ["fit", "-c", str(CONFIGS / "kits.yaml"), "--data.root", "x", "--data.fold", "first"], capsys
    )
    assert "fold" in message


def test_unknown_variant(capsys):
    message = _error_of(
        ["fit", "-c", str(CONFIGS / "kits.yaml"), "--data.root", "x", "--model.variant", "vit_s"], capsys
    )
    assert "vit_s" in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["fit", "-c", str(SYNTHETIC_CONFIG), "--data.root", "x", "--data.std", "-1"],
            "std must be positive",
        ),
        (
            ["fit", "-c", str(SYNTHETIC_CONFIG), "--data.root", "x", "--data.target_spacing", "0"],
            "spacing",
        ),
        (["make-synthetic", "unused", "--num_cases", "0"], "num_cases must be >= 1"),
        (
            [
                *("fit", "-c", str(SYNTHETIC_CONFIG), "--data.root", "x"),
                *("--trainer.accelerator", "cpu", "--trainer.devices", "-1"),
            ],
            "refused the trainer settings: `devices`",
        ),
        (
            [
                *("fit", "-c", str(SYNTHETIC_CONFIG), "--data.root", "x"),
                *("--trainer.enable_checkpointing", "false"),
            ],
            "refused the trainer settings: Trainer was configured with `enable_checkpointing=False`",
        ),
    ],
)
def test_config_mistakes_are_messages_not_tracebacks(args, expected, capsys):
    message = _error_of(args, capsys)
    assert message.startswith("sam3d: error:")
    assert expected in message


def test_sam_checkpoint_that_does_not_exist(synthetic_root, tmp_path, capsys):
    message = _error_of(
        _fit_args(synthetic_root, tmp_path, "--model.sam_checkpoint", str(tmp_path / "sam.pth")), capsys
    )
    assert f"SAM checkpoint {tmp_path / 'sam.pth'} does not exist" in message
    assert "Traceback" not in message


def test_sam_checkpoint_of_another_size(synthetic_root, tmp_path, capsys):
    from sam3d.models import build_sam_2d
    from sam3d.models.config import VARIANTS

    torch.save(build_sam_2d(VARIANTS["tiny"]).state_dict(), tmp_path / "sam_tiny.pth")
    args = _fit_args(
        synthetic_root,
        tmp_path,
        "--model.variant",
        "vit_b",
        "--model.sam_checkpoint",
        str(tmp_path / "sam_tiny.pth"),
    )
    assert "is a SAM tiny checkpoint" in _error_of(args, capsys)


def test_crop_size_the_network_cannot_take(synthetic_root, tmp_path, capsys):
    message = _error_of(_fit_args(synthetic_root, tmp_path, "--data.patch_size", "[60, 64, 64]"), capsys)
    assert "crop size (60, 64, 64) cannot be taken by the tiny network" in message


def test_ckpt_path_to_a_foreign_file(synthetic_root, tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    message = _error_of(
        _fit_args(synthetic_root, tmp_path, "--ckpt_path", str(tmp_path / "foreign.ckpt")), capsys
    )
    assert "is not a sam3d checkpoint" in message


def test_ckpt_path_last_without_any_run(synthetic_root, tmp_path, capsys):
    message = _error_of(_fit_args(synthetic_root, tmp_path, "--ckpt_path", "last"), capsys)
    assert "no last.ckpt found" in message


@pytest.fixture
def matmul_precision():
    """Restores torch's global float32 matmul precision after the test."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    yield
    torch.set_float32_matmul_precision(before)


def test_validate_from_a_checkpoint_and_bf16_mixed(synthetic_root, tmp_path, matmul_precision, monkeypatch):
    from sam3d.cli import Sam3dTrainer
    from sam3d.module import VolumetricSamModule

    autocast_seen, validated = [], []
    network_logits, trainer_validate = VolumetricSamModule._logits, Sam3dTrainer.validate

    def recording_logits(self, batch):
        autocast_seen.append(
            (self.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        )
        return network_logits(self, batch)

    @functools.wraps(trainer_validate)  # the CLI reads validate's parameters from its signature
    def recording_validate(self, *args, **kwargs):
        validated.extend(trainer_validate(self, *args, **kwargs))
        return validated

    monkeypatch.setattr(VolumetricSamModule, "_logits", recording_logits)
    monkeypatch.setattr(Sam3dTrainer, "validate", recording_validate)
    main(_fit_args(synthetic_root, tmp_path, "--trainer.precision", "bf16-mixed"))
    assert torch.get_float32_matmul_precision() == "high"  # TF32 outside autocast
    assert {training for training, *_ in autocast_seen} == {True, False}  # training and validation steps
    assert {seen[1:] for seen in autocast_seen} == {(True, torch.bfloat16)}
    best = next(tmp_path.glob("**/checkpoints/best-*.ckpt"))
    best_dice = torch.load(best, weights_only=True)["callbacks"]
    best_dice = next(float(s["best_model_score"]) for k, s in best_dice.items() if "val/dice" in k)
    autocast_seen.clear()
    main(
        [
            "validate",
            *_fit_args(
                synthetic_root, tmp_path, "--ckpt_path", str(best), "--trainer.precision", "bf16-mixed"
            )[1:],
        ]
    )
    assert {seen[1:] for seen in autocast_seen} == {(True, torch.bfloat16)}
    # The same weights on the same validation patches: the Dice that chose the checkpoint.
    assert len(validated) == 1
    assert validated[0]["val/dice"] == pytest.approx(best_dice, abs=1e-4)


def test_disk_full_while_saving_keeps_the_last_checkpoint(synthetic_root, tmp_path, monkeypatch):
    import errno

    original_save = torch.save

    def fills_the_disk(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        original_save(obj, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(SystemExit, match=r"disk is full .* resume with --ckpt_path last"):
        main(_fit_args(synthetic_root, tmp_path, "--trainer.max_epochs", "2"))
    last = next(tmp_path.glob("**/checkpoints/last.ckpt"))
    assert torch.load(last, weights_only=True)["epoch"] == 0
    monkeypatch.undo()
    main(_fit_args(synthetic_root, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_last_checkpoint_follows_every_epoch_when_validation_is_rarer(synthetic_root, tmp_path):
    main(
        _fit_args(
            synthetic_root, tmp_path, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "3"
        )
    )
    last = torch.load(next(tmp_path.glob("**/checkpoints/last.ckpt")), weights_only=True)
    assert last["epoch"] == 1


def test_authors_checkpoint_criterion_in_a_full_fp32_run(synthetic_root, tmp_path, matmul_precision):
    main(_fit_args(synthetic_root, tmp_path, "--model.checkpoint_monitor", "val/dice_loss"))
    assert torch.get_float32_matmul_precision() == "highest"  # 32-true: no TF32, as the authors' code
    best = torch.load(next(tmp_path.glob("**/checkpoints/best-*.ckpt")), weights_only=False)
    assert best["hyper_parameters"]["checkpoint_monitor"] == "val/dice_loss"
    states = [
        key for key in best["callbacks"] if key.startswith("ModelCheckpoint{'monitor': 'val/dice_loss'")
    ]
    assert len(states) == 1
    assert "'mode': 'min'" in states[0]  # the lowest soft Dice loss wins


@pytest.mark.parametrize("dataset", ["kits", "pancreas", "lits", "colon"])
def test_interactive_overlay_composes_with_each_dataset_config(dataset, tmp_path, capsys):
    args = ["fit", "-c", f"{dataset}.yaml", "-c", "clicks/interactive.yaml", "--data.root", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["data"]["dataset"], printed["data"]["click_mode"]) == (dataset, "interactive")
    assert (printed["data"]["num_positive_clicks"], printed["data"]["num_context_clicks"]) == (1, 1)
    assert printed["model"]["init_args"]["correction_rounds"] == 4
    assert printed["model"]["init_args"]["click_maps"] is True
    assert printed["evaluation"]["refinement_clicks"] == 4
    assert printed["model"]["init_args"]["variant"] == "vit_b"


def test_fit_with_the_interactive_overlay_gives_the_model_its_click_mode_and_maps(synthetic_root, tmp_path):
    overlay = ["-c", str(CONFIGS / "clicks" / "interactive.yaml"), "--trainer.logger", "false"]
    main(_fit_args(synthetic_root, tmp_path, *overlay, "--trainer.limit_train_batches", "2"))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["click_mode"] == "interactive"
    assert checkpoint["hyper_parameters"]["correction_rounds"] == 4
    # The overlay's network knows where clicks are, and two steps already train that part.
    assert checkpoint["hyper_parameters"]["click_maps"] is True
    assert checkpoint["state_dict"]["net.prompt_encoder.click_maps.project.weight"].abs().sum() > 0


# One click-mode setting (data.click_mode) -----------------------------------------------------------------
def test_print_config_shows_the_click_mode_that_runs(tmp_path, capsys):
    args = ["fit", "-c", "kits.yaml", "-c", "clicks/interactive.yaml", "--data.root", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["click_mode"] == "interactive"
    # The model's is linked from the data's: not printed, or printed as the data's.
    assert printed["model"]["init_args"].get("click_mode", "interactive") == "interactive"


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        (["--model.click_mode", "interactive"], "model.click_mode"),
        (["-c", "clicks/interactive.yaml", "--model.click_mode", "reference"], "model.click_mode"),
        (["--model.init_args.click_mode=labelled"], "model.click_mode"),
        (["--model.crop_size", "[32, 32, 32]"], "model.crop_size"),
    ],
)
def test_linked_model_arguments_are_not_settings(settings, refused, tmp_path, capsys, nothing_built):
    message = _error_of(["fit", "-c", "kits.yaml", "--data.root", str(tmp_path), *settings], capsys)
    assert f"{refused} is not a setting" in message
    assert "data." in message


def test_a_config_file_with_the_model_click_mode_is_refused(tmp_path, capsys, nothing_built):
    config = tmp_path / "old.yaml"
    config.write_text("model:\n  init_args:\n    click_mode: labelled\n")
    message = _error_of(["fit", "-c", "kits.yaml", "-c", str(config), "--data.root", str(tmp_path)], capsys)
    assert "model.click_mode is not a setting: data.click_mode is" in message


def test_resuming_with_other_clicks_is_refused(trained, synthetic_root, tmp_path, capsys, nothing_built):
    _, checkpoint = trained  # configs/synthetic.yaml: labelled clicks
    args = _fit_args(
        synthetic_root, tmp_path, "--ckpt_path", str(checkpoint), "--data.click_mode", "reference"
    )
    message = _error_of(args, capsys)
    assert "resumes a run trained with data.click_mode labelled but the config says reference" in message


def test_resuming_with_another_prompt_learning_rate_is_refused(
    trained, synthetic_root, tmp_path, capsys, nothing_built
):
    _, checkpoint = trained
    args = _fit_args(
        synthetic_root, tmp_path, "--ckpt_path", str(checkpoint), "--model.prompt_lr_factor", "10"
    )
    message = _error_of(args, capsys)
    assert "trained with model.prompt_lr_factor 1.0 but the config says 10.0" in message


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_a_command_that_needs_a_checkpoint_is_refused_before_anything_is_built(
    subcommand, tmp_path, capsys, nothing_built
):
    message = _error_of([subcommand, "-c", str(SYNTHETIC_CONFIG), "--data.root", str(tmp_path)], capsys)
    assert f"sam3d {subcommand} needs --ckpt_path" in message


def test_predict_without_scans_is_refused_before_anything_is_built(trained, tmp_path, capsys, nothing_built):
    _, checkpoint = trained
    args = [
        "predict",
        "-c",
        str(SYNTHETIC_CONFIG),
        "--data.root",
        str(tmp_path),
        "--ckpt_path",
        str(checkpoint),
    ]
    assert "sam3d predict needs --data.predict_scans" in _error_of(args, capsys)


# The checkpoint is read once per command --------------------------------------------------------------------
def _clicks_file(root: Path, path: Path) -> Path:
    import nibabel as nib
    import numpy as np

    scan = min((root / "imagesTr").glob("*.nii.gz"))
    target = np.argwhere(np.asarray(nib.load(root / "labelsTr" / scan.name).dataobj) > 0)
    path.write_text(
        f"scan,x,y,z,space,label\n{scan.name},{','.join(map(str, target[len(target) // 2]))},voxel,positive\n"
    )
    return path


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict", "serve"])
def test_the_checkpoint_file_is_read_once_per_command(
    subcommand, trained, synthetic_root, tmp_path, monkeypatch
):
    from cli_helpers import predict_options

    from sam3d.serve import command

    served = []
    monkeypatch.setattr(
        command, "run", lambda app, host, port, **options: served.append(app)
    )  # no server started

    _, checkpoint = trained
    reads: list[str] = []
    load = torch.load

    def counting_load(file, *args, **kwargs):
        # A path, or an open file (fsspec's files name theirs `path`).
        source = file if isinstance(file, str | Path) else getattr(file, "path", getattr(file, "name", None))
        if isinstance(source, str | Path) and Path(source).resolve() == checkpoint.resolve():
            reads.append(subcommand)
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    extra = [
        "--ckpt_path",
        str(checkpoint),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
    ]
    if subcommand == "predict":
        scan = min((synthetic_root / "imagesTr").glob("*.nii.gz"))
        clicks = _clicks_file(synthetic_root, tmp_path / "clicks.csv")
        extra = predict_options(checkpoint, [scan], clicks, tmp_path / "masks")
    main(
        synthetic_cli_args(subcommand, synthetic_root, tmp_path, *extra)
    )  # fit: resumes at max_epochs, stops
    assert reads == [subcommand]
    assert len(served) == (subcommand == "serve")
