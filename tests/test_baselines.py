"""Fully supervised baselines and the SAM's automatic mode: networks, crops, loss, sliding windows, CLI runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import synthetic_cli_args

from sam3d.automatic import AutomaticSamModule
from sam3d.baselines import build_baseline, nnunet_plan
from sam3d.cli import main
from sam3d.data.scans.evaluation_cases import EvaluationCase
from sam3d.errors import Sam3dError
from sam3d.inference import sliding_window_probability
from sam3d.models import CheckpointError
from sam3d.supervised import SupervisedBaselineModule, deep_supervision_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Tiny sizes of each method for the CPU (32^3 crops); the overlays' networks otherwise.
TINY = {
    "dynunet": ["--model.init_args.feature_size", "4"],
    "swinunetr": [
        "--model.init_args.feature_size",
        "12",
        "--model.init_args.options",
        '{"depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}',
    ],
    "unetr": [
        "--model.init_args.feature_size",
        "4",
        "--model.init_args.options",
        '{"hidden_size": 48, "mlp_dim": 96, "num_heads": 4}',
    ],
    "automatic": [],
}
OVERLAYS = {
    "dynunet": "baselines/dynunet.yaml",
    "swinunetr": "baselines/swinunetr.yaml",
    "unetr": "baselines/unetr.yaml",
    "automatic": "automatic/sam.yaml",
}


def test_nnunet_plan_for_a_128_crop_is_the_full_resolution_unet():
    plan = nnunet_plan((128, 128, 128))
    assert plan.filters == (32, 64, 128, 256, 320, 320)
    assert plan.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert plan.kernel_size == ((3, 3, 3),) * 6
    assert plan.deep_supervision_heads == 3
    assert plan.divisor == (32, 32, 32)


def test_nnunet_plan_pools_each_axis_down_to_four_voxels():
    plan = nnunet_plan((32, 64, 128), base_filters=8)
    assert plan.divisor == (8, 16, 32)  # 32 -> 4 after 3 poolings, 64 after 4, 128 after 5
    assert plan.strides[4:] == ((1, 2, 2), (1, 1, 2))
    assert plan.filters == (8, 16, 32, 64, 80, 80)  # capped at 10x the base, as 320 for 32


@pytest.mark.parametrize(
    ("network", "crop", "expected"),
    [
        ("dynunet", (100, 128, 128), "multiple of 16; use 96 or 112"),
        ("dynunet", (4, 128, 128), "at least 8 voxels"),
        ("swinunetr", (96, 80, 64), "multiple of 32 (axis 1: use 64 or 96"),
        ("swinunetr", (32, 64, 64), "at least 64 voxels"),
        ("unetr", (64, 40, 64), "multiple of 16 (axis 1: use 32 or 48"),
    ],
)
def test_a_crop_the_network_cannot_take_is_refused_with_sizes_that_fit(network, crop, expected):
    with pytest.raises(Sam3dError, match=r"data\.patch_size") as error:
        build_baseline(network, crop)
    assert expected in str(error.value)


def test_bad_network_options_are_refused_naming_them():
    with pytest.raises(Sam3dError, match="hidden_size"):
        build_baseline("unetr", (32, 32, 32), options={"hidden_size": 50, "num_heads": 4})


@pytest.mark.parametrize("network", ["dynunet", "swinunetr", "unetr"])
def test_each_baseline_maps_crops_to_two_class_logits(network):
    width, options = {"dynunet": (4, {}), "swinunetr": (12, TINY_SWIN), "unetr": (4, TINY_UNETR)}[network]
    crop = CROPS[network]
    module = SupervisedBaselineModule(network, crop, feature_size=width, options=options).eval()
    with torch.no_grad():
        assert module(torch.randn(1, 1, *crop)).shape == (1, 2, *crop)


TINY_UNETR = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
TINY_SWIN = {"depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
CROPS = {"dynunet": (32, 32, 32), "swinunetr": (64, 64, 64), "unetr": (32, 32, 32), "automatic": (64, 64, 64)}


def test_dynunet_trains_its_deep_supervision_heads_with_halving_weights():
    module = SupervisedBaselineModule("dynunet", (32, 32, 32), feature_size=4)
    batch = {"image": torch.randn(1, 1, 32, 32, 32), "label": (torch.rand(1, 1, 32, 32, 32) > 0.9).float()}
    heads = module(batch["image"]).unbind(1)
    assert len(heads) == 2  # 32^3: three poolings, one head besides the full-resolution output
    expected = (2 * module.loss(heads[0], batch["label"]) + module.loss(heads[1], batch["label"])) / 3
    assert module.training_loss(batch, 0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert deep_supervision_weights(3) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    module.eval()
    assert module(batch["image"]).shape == (1, 2, 32, 32, 32)  # the full-resolution output only


def test_sliding_window_covers_the_whole_volume_and_blends_probabilities():
    image = torch.randn(37, 50, 21)  # not a multiple of the crop, and smaller than it along one axis
    seen: list[tuple[int, ...]] = []

    def logits(crops: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(crops.shape))
        return torch.cat([torch.zeros_like(crops), crops], 1)  # foreground probability sigmoid(x)

    probability = sliding_window_probability(logits, image, (16, 16, 32), overlap=0.5, batch_size=3)
    assert probability.shape == image.shape
    torch.testing.assert_close(probability, image.sigmoid())
    assert all(shape[0] <= 3 and shape[2:] == (16, 16, 32) for shape in seen)


def test_automatic_sam_segments_without_clicks_at_the_paper_token_count():
    module = AutomaticSamModule(variant="tiny", crop_size=(128, 128, 128), freeze_sam=False)
    assert module.net.config.input_scale == 2.0  # 128^3 x 2 = 256^3, as tiny's 64^3 x 4
    assert module.net.config.token_grid == (16, 16, 16)
    assert not any(p.requires_grad for p in module.net.prompt_encoder.parameters())
    assert "prompt_encoder" not in {name for name, params in module.parameter_groups().items() if params}
    small = AutomaticSamModule(variant="tiny", freeze_sam=False).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 1, 64, 64, 64)).shape == (1, 2, 64, 64, 64)


def _padding_seen(module: torch.nn.Module) -> set[float]:
    """The values a test volume smaller than the sliding window is padded with, as ``module`` sees them."""
    image = torch.full((40, 40, 40), 2.0)
    image[0, 0, 0] = -5.0  # the volume's minimum
    crops: list[torch.Tensor] = []
    forward = module.forward
    module.forward = lambda crop: crops.append(crop.clone()) or forward(crop)  # type: ignore[method-assign]
    label = torch.zeros(40, 40, 40, dtype=torch.bool)
    label[20, 20, 20] = True
    case = EvaluationCase("c", image, label, (1.0, 1.0, 1.0), lambda p: p, label, (1.0, 1.0, 1.0))
    with torch.no_grad():
        module.evaluate_test_case(case)
    outside = torch.ones(crops[0].shape[2:], dtype=torch.bool)
    outside[12:52, 12:52, 12:52] = False  # MONAI pads evenly on both sides: 64 - 40 = 24
    return set(crops[0][0, 0][outside].unique().tolist())


def test_the_automatic_sam_pads_with_zero_as_the_authors_test_auto_where_baselines_pad_with_the_minimum():
    automatic = AutomaticSamModule(variant="tiny", freeze_sam=False).eval()
    assert _padding_seen(automatic) == {0.0}  # MONAI's default in test_auto.py: the mean after z-scoring
    baseline = SupervisedBaselineModule("dynunet", (64, 64, 64), feature_size=4).eval()
    assert _padding_seen(baseline) == {-5.0}


def test_the_automatic_overlay_clips_gradients_at_12_as_train_auto(tmp_path, capsys):
    args = ["fit", "-c", str(CONFIGS / "kits.yaml"), "-c", str(CONFIGS / OVERLAYS["automatic"])]
    with pytest.raises(SystemExit):
        main([*args, "--data.root", str(tmp_path), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["gradient_clip_val"] == 12.0


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("baseline-cache")


def _run(subcommand, method, root, workdir, cache_dir, *extra):
    return synthetic_cli_args(
        subcommand,
        root,
        workdir,
        "-c",
        str(CONFIGS / OVERLAYS[method]),
        "--data.patch_size",
        str(list(CROPS[method])),
        "--data.cache_dir",
        str(cache_dir),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--evaluation.overlap",
        "0",
        "--evaluation.window_batch_size",
        "8",
        *TINY[method],
        *extra,
    )


@pytest.fixture(scope="module")
def fitted(synthetic_root, tmp_path_factory, cache_dir):
    """``fitted(method)``: the working folder and last checkpoint of a two-step run (each method fitted once)."""
    runs: dict[str, tuple[Path, Path]] = {}

    def fit(method: str) -> tuple[Path, Path]:
        if method not in runs:
            workdir = tmp_path_factory.mktemp(method)
            main(_run("fit", method, synthetic_root, workdir, cache_dir))
            runs[method] = workdir, next(workdir.glob("runs/**/checkpoints/last.ckpt"))
        return runs[method]

    return fit


@pytest.mark.parametrize("method", ["dynunet", "swinunetr", "unetr", "automatic"])
def test_each_method_trains_and_tests_through_the_shared_reports(method, fitted, synthetic_root, cache_dir):
    workdir, checkpoint = fitted(method)
    main(_run("test", method, synthetic_root, workdir, cache_dir, "--ckpt_path", str(checkpoint)))
    report = checkpoint.parent.parent / "test"
    with open(report / "cases.csv") as stream:
        rows = list(csv.DictReader(stream))
    summary = json.loads((report / "summary.json").read_text())
    assert rows
    assert {(row["repeat"], row["clicks"]) for row in rows} == {("0", "0")}
    assert summary["cases"] == len(rows)
    assert list(summary["by_clicks"]) == ["0"]
    dice = [float(row["dice"]) for row in rows]
    assert summary["final"]["dice"]["mean"] == pytest.approx(sum(dice) / len(dice))
    assert summary["settings"]["overlap"] == 0


@pytest.fixture
def baseline_checkpoint(fitted):
    return fitted("dynunet")[1]


def _error_of(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    captured = capsys.readouterr()
    return f"{exit_info.value.code}\n{captured.err}"


def test_a_baseline_checkpoint_is_refused_by_the_volumetric_sam(
    baseline_checkpoint, synthetic_root, tmp_path, capsys
):
    for subcommand in ("test", "predict"):
        args = synthetic_cli_args(
            subcommand, synthetic_root, tmp_path, "--ckpt_path", str(baseline_checkpoint)
        )
        message = _error_of(args, capsys)
        assert "holds a SupervisedBaselineModule but the config builds a VolumetricSamModule" in message
        assert "baselines/<network>.yaml" in message
        assert "Traceback" not in message


def test_a_sam_checkpoint_is_refused_by_a_baseline_config(
    trained, synthetic_root, tmp_path, cache_dir, capsys
):
    _, checkpoint = trained
    args = _run("test", "unetr", synthetic_root, tmp_path, cache_dir, "--ckpt_path", str(checkpoint))
    message = _error_of(args, capsys)
    assert "holds a VolumetricSamModule but the config builds a SupervisedBaselineModule" in message
    module = SupervisedBaselineModule("dynunet", (32, 32, 32), feature_size=4)
    with pytest.raises(CheckpointError, match="holds a VolumetricSamModule but this run builds a Supervised"):
        module.on_load_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True))


def test_predict_with_a_baseline_says_it_takes_no_clicks(
    baseline_checkpoint, synthetic_root, tmp_path, capsys
):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("scan,x,y,z\nphantom_000,0,0,0\n")
    args = _run(
        "predict",
        "dynunet",
        synthetic_root,
        tmp_path,
        tmp_path / "cache",
        "--ckpt_path",
        str(baseline_checkpoint),
        "--data.predict_scans",
        f"[{synthetic_root / 'imagesTr'}]",
        "--data.predict_clicks",
        str(clicks),
    )
    message = _error_of(args, capsys)
    assert "does not take" in message
    assert "sam3d test" in message


def test_overlays_compose_with_every_dataset_config(tmp_path, capsys):
    for overlay in OVERLAYS.values():
        with pytest.raises(SystemExit):
            main(["fit", "-c", "kits.yaml", "-c", overlay, "--data.root", str(tmp_path), "--print_config"])
        printed = capsys.readouterr().out
        assert "class_path: sam3d." in printed
        assert "dataset: kits" in printed


def test_a_crop_the_overlay_cannot_take_stops_the_command_with_one_message(synthetic_root, tmp_path):
    args = synthetic_cli_args("fit", synthetic_root, tmp_path, "-c", "baselines/swinunetr.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--data.patch_size", "[96, 80, 64]"])
    message = exit_info.value.code
    assert isinstance(message, str)
    assert message.startswith("sam3d: error: crop size (96, 80, 64) cannot be taken by SwinUNETR")
    assert "use 64 or 96" in message


def test_the_automatic_sam_is_a_sibling_of_the_promptable_one_without_its_clicks(capsys, tmp_path):
    from sam3d.module import VolumetricSamModule
    from sam3d.task import SegmentationTask
    from sam3d.volumetric import VolumetricSamTask

    assert not issubclass(AutomaticSamModule, VolumetricSamModule)
    assert issubclass(AutomaticSamModule, VolumetricSamTask)
    assert issubclass(VolumetricSamModule, VolumetricSamTask)
    assert AutomaticSamModule.predict_step is SegmentationTask.predict_step
    assert not AutomaticSamModule.takes_clicks
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "-c",
                "kits.yaml",
                "-c",
                OVERLAYS["automatic"],
                "--data.root",
                str(tmp_path),
                "--print_config",
            ]
        )
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert model["input_scale"] is None
    assert not {"click_mode", "correction_rounds", "click_maps"} & set(model)


@pytest.mark.parametrize("method", ["automatic", "dynunet"])
@pytest.mark.parametrize(
    ("subcommand", "settings", "expected"),
    [
        ("fit", ["-c", "clicks/interactive.yaml"], "config asks for clicks: model.correction_rounds"),
        ("fit", ["--data.click_mode", "interactive"], "config asks for clicks: data.click_mode interactive"),
        (
            "test",
            ["--evaluation.refinement_clicks", "2"],
            "config asks for clicks: evaluation.refinement_clicks 2",
        ),
        ("predict", [], "sam3d predict segments new scans from their clicks, which"),
        ("serve", [], "sam3d serve segments new scans from their clicks, which"),
    ],
)
def test_click_settings_for_a_trainer_without_clicks_are_refused_before_anything_is_built(
    method, subcommand, settings, expected, synthetic_root, tmp_path, capsys, nothing_built
):
    message = _error_of(
        _run(subcommand, method, synthetic_root, tmp_path, tmp_path / "cache", *settings), capsys
    )
    assert expected in message
    trainer = "AutomaticSamModule" if method == "automatic" else "SupervisedBaselineModule"
    assert trainer in message
    assert "Traceback" not in message


def test_the_clicks_overlay_before_a_trainer_overlay_is_refused_too(
    synthetic_root, tmp_path, capsys, nothing_built
):
    args = synthetic_cli_args(
        "fit", synthetic_root, tmp_path, "-c", "clicks/interactive.yaml", "-c", OVERLAYS["automatic"]
    )
    message = _error_of(args, capsys)
    assert "AutomaticSamModule (-c automatic/sam.yaml) segments without clicks" in message
    assert "data.click_mode interactive" in message
    assert "Leave out the clicks overlay (clicks/interactive.yaml)" in message


def _with_hyperparameters(checkpoint: Path, path: Path, **hyperparameters) -> Path:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["hyper_parameters"].update(hyperparameters)
    torch.save(saved, path)
    return path


def test_an_automatic_checkpoint_holding_the_old_click_arguments_still_loads(
    fitted, synthetic_root, cache_dir, tmp_path
):
    # Written while AutomaticSamModule took the promptable trainer's arguments (the data's clicks, unused).
    old = _with_hyperparameters(
        fitted("automatic")[1],
        tmp_path / "old.ckpt",
        click_mode="labelled",
        correction_rounds=4,
        click_maps=False,
    )
    main(_run("test", "automatic", synthetic_root, tmp_path, cache_dir, "--ckpt_path", str(old)))
    assert list(tmp_path.glob("**/test/summary.json"))


def test_an_automatic_checkpoint_trained_with_clicks_is_refused(
    fitted, synthetic_root, cache_dir, tmp_path, capsys
):
    old = _with_hyperparameters(
        fitted("automatic")[1], tmp_path / "old.ckpt", click_mode="interactive", click_maps=True
    )
    message = _error_of(
        _run("test", "automatic", synthetic_root, tmp_path, cache_dir, "--ckpt_path", str(old)), capsys
    )
    assert "trained with click settings (click_mode interactive, click_maps True)" in message
