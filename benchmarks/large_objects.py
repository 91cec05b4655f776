"""One click on tumours larger than a crop: crops that grow with the object (``full``) against one crop (``paper``).

``sam3d serve`` and ``InteractionSession`` place crops as ``full`` by default: a mask that reaches a crop's
border grows into the neighbouring crops. This trains the tiny network with the demo recipe
(``configs/synthetic.yaml``) on ordinary phantoms (or takes ``--ckpt-path``), makes phantoms whose lesions
are larger than its 64^3 crop (1 mm grid: 64 mm), and scores one centre click on them with ``sam3d test``
under both crop placements, in the same run: Dice, NSD, crops per case and seconds.

Run (CPU, ~15 min on two shared cores):
``.venv/bin/python benchmarks/large_objects.py --workdir /tmp/sam3d-large``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from interactive_vs_paper import CONFIGS, _sam3d, leave_out_split

from sam3d.data import make_synthetic_dataset

CROP_MM = 64.0  # configs/synthetic.yaml: 64^3 crops on the default 1 mm grid


def lesion_extents(root: Path) -> dict[str, float]:
    """Each phantom's largest lesion extent in mm along a voxel axis."""
    extents = {}
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        label = nib.load(path)
        found = np.nonzero(np.asarray(label.dataobj))
        spacing = np.linalg.norm(label.affine[:3, :3], axis=0)
        extents[path.name.removesuffix(".nii.gz")] = float(
            max((axis.max() - axis.min() + 1) * step for axis, step in zip(found, spacing, strict=True))
        )
    return extents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="data, runs and logs go here")
    parser.add_argument(
        "--ckpt-path", type=Path, help="a tiny checkpoint of configs/synthetic.yaml; default: train one"
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--num-cases", type=int, default=6, help="phantoms with a large lesion")
    parser.add_argument(
        "--radius-mm", type=float, nargs=2, default=(30.0, 40.0), help="their lesion radius range"
    )
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "sam3d.log"
    common = ["-c", str(CONFIGS / "synthetic.yaml"), "--trainer.logger", "false", "--seed_everything", "0"]
    checkpoint = args.ckpt_path
    if checkpoint is None:
        train = work / "train"
        if not (train / "dataset.json").is_file():
            make_synthetic_dataset(train, num_cases=24, seed=0)
        run = [*common, "--data.root", str(train), "--data.cache_dir", str(work / "cache-train")]
        seconds = _sam3d(
            [
                "fit",
                *run,
                "--trainer.max_epochs",
                str(args.epochs),
                "--trainer.default_root_dir",
                str(work / "fit"),
            ],
            log,
        )
        checkpoint = work / "fit" / "checkpoints" / "last.ckpt"
        print(f"trained {args.epochs} epochs in {seconds:.0f} s", flush=True)
    large = work / "large"
    if not (large / "dataset.json").is_file():
        # one more than tested: a fold needs a training case, though testing trains nothing
        make_synthetic_dataset(
            large, num_cases=args.num_cases + 1, seed=100, lesion_radius_mm=tuple(args.radius_mm)
        )
    extents = dict(sorted(lesion_extents(large).items())[: args.num_cases])
    split = leave_out_split(large, list(extents), work / "split.json")
    results = {}
    for crops in ("paper", "full"):
        folder = work / crops
        seconds = _sam3d(
            [
                "test",
                *common,
                *("--data.root", str(large), "--data.cache_dir", str(work / "cache-large")),
                *("--data.split_file", str(split), "--data.fold", "0"),
                *("--trainer.default_root_dir", str(folder), "--ckpt_path", str(checkpoint)),
                *("--evaluation.protocol", crops, "--evaluation.first_click", "center"),
            ],
            log,
        )
        summary = json.loads((folder / "test" / "summary.json").read_text())
        results[crops] = {"summary": summary, "seconds": seconds}
    (work / "results.json").write_text(
        json.dumps({"extents_mm": extents, "results": results}, indent=2) + "\n"
    )
    larger = sum(extent > CROP_MM for extent in extents.values())
    print(
        f"{len(extents)} phantoms, lesion extents {min(extents.values()):.0f}-{max(extents.values()):.0f} mm; "
        f"{larger} longer than the {CROP_MM:.0f} mm crop"
    )
    print("| crops | Dice, 1 click | NSD, 1 click | test s |\n|---|---|---|---|")
    for crops, result in results.items():
        scores = result["summary"]["by_clicks"]["1"]
        print(
            f"| {crops} | {scores['dice']['mean']:.3f} ± {scores['dice']['std']:.3f} | "
            f"{scores['nsd']['mean']:.3f} | {result['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
