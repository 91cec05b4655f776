"""Dice and NSD per step on the held-out LiTS case 117 (PyPI liver-ct-segmentation-package) per first interaction.

Writes the case with ``sam3d make-lits117``'s route (needs ``pip install --no-deps
liver-ct-segmentation-package==1.6.0``), then, for ``--ckpt-path`` and its ``--config``:

* ``click``: ``sam3d test --evaluation.protocol full``, first click at the deepest point of the largest
  tumour, then ``--refinement-clicks`` correction clicks;
* ``box``: ``sam3d test --evaluation.protocol cvpr25`` (the tight box, five correction clicks; a network
  without box prompts gets a click at the box's centre instead);
* ``scribble`` (only for a checkpoint built with ``model.dense_prompts`` holding ``scribble``): ``sam3d
  predict`` with a positive scribble along the largest tumour's longest axis, scored here against that
  tumour and against all 79.

With ``--reference-checkpoint`` (the authors' LiTS ``best.pth.tar``) it imports it with ``sam3d
import-reference`` and tests it on the case with one click (``configs/lits.yaml``'s preprocessing).
Example: ``python benchmarks/lits117.py --ckpt-path runs/.../best.ckpt --config configs/synthetic.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from sam3d.cli import main
from sam3d.data.lits117 import ASSUMED_SPACING_MM, CASE_ID, write_lits117
from sam3d.reference_import import import_reference


def case_options(root: Path, workdir: Path) -> list[str]:
    """``sam3d test`` options that test volume-117 alone, everything written under ``workdir``."""
    options = {
        "--data.root": root,
        "--data.dataset": "msd",
        "--data.target_label": 1,
        "--data.split_file": root / "split.json",
        "--data.fold": 0,
        "--data.cache_dir": workdir / "cache",
        "--data.num_workers": 0,
        "--trainer.default_root_dir": workdir,
        "--trainer.logger.init_args.save_dir": workdir / "runs",
    }
    return [str(x) for kv in options.items() for x in kv]


def run_test(config: str, checkpoint: Path, root: Path, workdir: Path, *extra: str) -> list[dict[str, str]]:
    """Run ``sam3d test`` on the case and return the rows of its ``cases.csv`` (one per step)."""
    main(["test", "--config", config, *case_options(root, workdir), "--ckpt_path", str(checkpoint), *extra])
    with open(next(workdir.glob("runs/**/test/cases.csv"))) as stream:
        return list(csv.DictReader(stream))


def import_and_test_reference(source: Path, root: Path, workdir: Path) -> list[dict[str, str]]:
    """Import the authors' LiTS checkpoint with ``sam3d import-reference`` and test it on the case, one click."""
    checkpoint = Path(import_reference(str(source), str(workdir / "reference.ckpt")))
    return run_test("lits.yaml", checkpoint, root, workdir / "reference", "--evaluation.num_clicks", "1")


def largest_tumour(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The case's tumour label and its largest (6-connected) component, on the NIfTI grid."""
    label = np.asarray(nib.load(root / "labelsTr" / f"{CASE_ID}.nii.gz").dataobj) > 0
    components, _ = ndimage.label(label)
    return label, components == np.argmax(np.bincount(components.ravel())[1:]) + 1


def scribble_voxels(component: np.ndarray) -> list[list[int]]:
    """A positive scribble: the component's voxels on the line through its centre along its longest extent."""
    inside = np.argwhere(component)
    axis = int(np.argmax(inside.max(0) - inside.min(0)))
    centre = np.round(inside.mean(0)).astype(int)
    line = [voxel for voxel in inside if all(voxel[a] == centre[a] for a in range(3) if a != axis)]
    return [[int(c) for c in voxel] for voxel in line]


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two binary masks (1 when both are empty)."""
    total = prediction.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * (prediction & target).sum() / total)


def run_scribble(config: str, checkpoint: Path, root: Path, workdir: Path) -> dict[str, float]:
    """``sam3d predict`` from one scribble on the largest tumour; Dice against it and against all tumours."""
    label, component = largest_tumour(root)
    scan = root / "imagesTr" / f"{CASE_ID}.nii.gz"
    scribble = {
        "type": "scribble",
        "positions": scribble_voxels(component),
        "space": "voxel",
        "label": "positive",
    }
    clicks = workdir / "scribble.json"
    clicks.parent.mkdir(parents=True, exist_ok=True)
    clicks.write_text(json.dumps({"scans": [{"scan": scan.name, "interactions": [scribble]}]}))
    options = ["--ckpt_path", str(checkpoint), "--data.predict_scans", json.dumps([str(scan)])]
    options += ["--data.predict_clicks", str(clicks), "--prediction.output_dir", str(workdir / "masks")]
    main(["predict", "--config", config, *options, "--trainer.logger", "false"])
    mask = np.asarray(nib.load(workdir / "masks" / f"{CASE_ID}_mask.nii.gz").dataobj) > 0
    return {"dice_largest": dice(mask, component), "dice_all": dice(mask, label)}


def takes_scribbles(checkpoint: Path) -> bool:
    """Whether the checkpoint's network was built with scribble prompts."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return "scribble" in tuple(state.get("hyper_parameters", {}).get("dense_prompts", ()))


def print_steps(name: str, rows: list[dict[str, str]]) -> None:
    """One line per step: Dice, NSD and the step's seconds (``cases.csv``)."""
    for row in rows:
        seconds = f"  {float(row['seconds']):.2f} s" if row.get("seconds") else ""
        print(
            f"{name:8s} step {row['clicks']}: Dice {float(row['dice']):.3f}  NSD {float(row['nsd']):.3f}{seconds}"
        )


def main_cli() -> None:
    """Parse the arguments and run every arm."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-path", type=Path, help="a sam3d checkpoint to test")
    parser.add_argument("--config", default="synthetic.yaml", help="the checkpoint's config (preprocessing)")
    parser.add_argument("--reference-checkpoint", type=Path, help="the authors' LiTS best.pth.tar to import")
    parser.add_argument("--workdir", type=Path, default=Path("lits117-benchmark"))
    parser.add_argument("--refinement-clicks", type=int, default=4)
    parser.add_argument("--spacing", type=float, default=ASSUMED_SPACING_MM, help="assumed voxel size, mm")
    args = parser.parse_args()
    if args.ckpt_path is None and args.reference_checkpoint is None:
        parser.error("give --ckpt-path, --reference-checkpoint or both")
    root = write_lits117(args.workdir / "data", spacing=args.spacing)
    if args.ckpt_path is not None:
        clicks = ["--evaluation.protocol", "full", "--evaluation.first_click", "center"]
        clicks += ["--evaluation.refinement_clicks", str(args.refinement_clicks)]
        print_steps("click", run_test(args.config, args.ckpt_path, root, args.workdir / "click", *clicks))
        box = ["--evaluation.protocol", "cvpr25"]
        print_steps("box", run_test(args.config, args.ckpt_path, root, args.workdir / "box", *box))
        if takes_scribbles(args.ckpt_path):
            scores = run_scribble(args.config, args.ckpt_path, root, args.workdir / "scribble")
            print(
                f"scribble: Dice {scores['dice_largest']:.3f} (largest tumour), {scores['dice_all']:.3f} (all)"
            )
        else:
            print("scribble: skipped, the checkpoint takes no scribble prompts (model.dense_prompts)")
    if args.reference_checkpoint is not None:
        rows = import_and_test_reference(args.reference_checkpoint, root, args.workdir)
        print_steps("authors", rows)


if __name__ == "__main__":
    main_cli()
