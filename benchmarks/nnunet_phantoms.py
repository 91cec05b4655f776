"""nnU-Net v2 against the tiny promptable SAM on the synthetic phantoms, at equal epochs, through `sam3d report`.

    nice -n 15 .venv/bin/python benchmarks/nnunet_phantoms.py --output /tmp/nnunet-vs-sam --epochs 3

Both train on fold 0 of the same phantoms (``sam3d make-synthetic``, seeded folds as ``sam3d fit`` makes
them) on the CPU, and are scored on its test cases by sam3d's metrics:

* the SAM: ``sam3d fit``/``sam3d test -c synthetic.yaml`` (one click at the tumour centre);
* nnU-Net: ``sam3d export-nnunet``, ``nnUNetv2_plan_and_preprocess`` (3d_fullres), nnU-Net's own trainer
  through its Python API with ``num_epochs`` = ``--epochs`` and, so that an epoch is the same number of
  patches as sam3d's (``samples_per_volume`` per training volume), ``num_iterations_per_epoch`` = training
  volumes x samples_per_volume / nnU-Net's batch size (its default is 250 iterations); then
  ``nnUNetv2_predict -device cpu --disable_tta`` and ``sam3d score-masks``.

The numbers are synthetic and far from convergence for both: they check the route, not the methods.
Needs nnunetv2 (``pip install -e .[nnunet]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

BIN = Path(sys.executable).parent
SAM3D = [sys.executable, "-m", "sam3d"]  # this checkout's sam3d when run with PYTHONPATH set to it
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
DATASET_ID = 990

# nnU-Net's trainer with the epochs and iterations per epoch given, on the CPU (its Python API: the
# nnUNetv2_train command has no option for the iterations).
TRAIN = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
epochs, iterations = int(sys.argv[2]), int(sys.argv[3])
trainer = get_trainer_from_args(sys.argv[1], "3d_fullres", 0, "nnUNetTrainer", device=torch.device("cpu"))
trainer.num_epochs, trainer.num_iterations_per_epoch = epochs, iterations
trainer.num_val_iterations_per_epoch = max(1, iterations // 5)
trainer.run_training()
"""


def run(command: list[str], env: dict[str, str] | None = None) -> float:
    """Run a command, stopping on failure; its wall seconds."""
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    """Make the phantoms, train and test both methods, write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip_sam", action="store_true", help="only nnU-Net (the SAM's runs already made)")
    args = parser.parse_args()
    out = args.output.resolve()
    data, runs = out / "data", out / "runs"
    if not data.is_dir():
        run([*SAM3D, "make-synthetic", str(data), "--num_cases", str(args.cases), "--seed", "0"])
    settings = yaml.safe_load(CONFIG.read_text())["data"]

    nnunet = {
        "raw": out / "nnUNet_raw",
        "preprocessed": out / "nnUNet_preprocessed",
        "results": out / "nnUNet_results",
    }
    env = {**os.environ, **{f"nnUNet_{k}": str(v) for k, v in nnunet.items()}}
    env["nnUNet_def_n_proc"] = "1"  # one process for exporting masks
    # augmentation in the training process itself (0 would also give planning torch.set_num_threads(0))
    train_env = {**env, "nnUNet_n_proc_DA": "0"}
    folder = nnunet["raw"] / f"Dataset{DATASET_ID}_Phantoms"
    if not folder.is_dir():
        run(
            [
                *(
                    *SAM3D,
                    "export-nnunet",
                    str(data),
                    str(nnunet["raw"]),
                    str(DATASET_ID),
                    "--name",
                    "Phantoms",
                ),
                *(
                    "--target_label",
                    str(settings["target_label"]),
                    "--preprocessed",
                    str(nnunet["preprocessed"]),
                ),
            ]
        )
        run(
            [
                *(str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres"),
                *("--verify_dataset_integrity", "-np", "1", "-npfp", "1"),
            ],
            env,
        )
    train_cases = len(json.loads((folder / "sam3d_fold.json").read_text())["train"])
    plans = json.loads((nnunet["preprocessed"] / folder.name / "nnUNetPlans.json").read_text())
    batch = plans["configurations"]["3d_fullres"]["batch_size"]
    iterations = math.ceil(train_cases * settings["samples_per_volume"] / batch)
    print(
        f"nnU-Net: {args.epochs} epochs of {iterations} iterations of batch {batch} "
        f"({train_cases} training volumes x {settings['samples_per_volume']} patches per epoch)",
        flush=True,
    )
    finished = nnunet["results"] / folder.name / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    if (finished / "checkpoint_final.pth").is_file():  # a second run (e.g. with --skip_sam) reuses it
        print(f"nnU-Net: reusing the finished training in {finished}", flush=True)
        train_seconds = math.nan
    else:
        train_seconds = run(
            [sys.executable, "-c", TRAIN, str(DATASET_ID), str(args.epochs), str(iterations)], train_env
        )
    predictions = out / "nnunet_predictions"
    predict_seconds = run(
        [
            *(str(BIN / "nnUNetv2_predict"), "-i", str(folder / "imagesTs"), "-o", str(predictions)),
            *("-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-device", "cpu", "--disable_tta"),
            *("-npp", "1", "-nps", "1"),
        ],
        env,
    )
    test_cases = len(list(folder.glob("imagesTs/*.nii.gz")))
    run(
        [
            *(
                *SAM3D,
                "score-masks",
                str(predictions),
                str(folder),
                "--output",
                str(runs / "nnunet" / "test"),
            ),
            *("--seconds_per_case", f"{predict_seconds / test_cases:.3f}"),
        ]
    )
    weights = torch.load(finished / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # the decoder keeps a reference to the encoder, whose weights the state dict lists a second time
    weights = {k: w for k, w in weights["network_weights"].items() if not k.startswith("decoder.encoder.")}
    print(
        f"nnU-Net: {sum(w.numel() for w in weights.values()):,} parameters, training {train_seconds:.0f} s, "
        f"prediction {predict_seconds:.0f} s for {test_cases} cases (process start included)"
    )

    if not args.skip_sam:
        common = [
            *("-c", "synthetic.yaml", "--data.root", str(data), "--data.cache_dir", str(out / "cache")),
            *("--trainer.max_epochs", str(args.epochs), "--trainer.check_val_every_n_epoch", "1"),
            *("--trainer.logger.init_args.save_dir", str(runs / "sam")),
        ]
        sam_seconds = run([*SAM3D, "fit", *common])
        run([*SAM3D, "test", *common, "--ckpt_path", "best", "--evaluation.first_click", "center"])
        print(f"SAM: training {sam_seconds:.0f} s")
    subprocess.run([*SAM3D, "report", str(runs), "--output", str(out / "report")], check=True)


if __name__ == "__main__":
    main()
