"""Figures behind two of the differences from the authors' recipe listed in docs/reproducing.md.

1. Labels: nearest-neighbour against linear-then-0.5 resampling to 1 mm, on real CT labels.
2. Zoom-outs: the region a crop zoomed out by 0.85 (the authors' strongest) is interpolated from, for the
   promptable (128^3) and automatic (256^3) crops, each 1.2x as the crop is cut before the patch.

.venv/bin/python benchmarks/recipe_gaps.py [--data ../shared/data/ibsi-sts-ct]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from sam3d.data.preprocessing import read_volume, to_grid
from sam3d.data.training.augmentation import Warp
from sam3d.data.training.patches import CROP_MARGIN


def label_differences(root: Path) -> None:
    """Target voxels after each resampling and the Dice between the two, per case."""
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        label = read_volume(path, "label", path.name)
        nearest = to_grid(label, (1.0, 1.0, 1.0)).data > 0
        linear = to_grid(label, (1.0, 1.0, 1.0), labels="linear").data > 0
        dice = 2 * int((nearest & linear).sum()) / (int(nearest.sum()) + int(linear.sum()))
        spacing = ", ".join(f"{s:.3g}" for s in label.spacing)
        print(
            f"{path.name} ({spacing} mm): nearest {int(nearest.sum()):,} voxels, linear {int(linear.sum()):,}, "
            f"Dice between them {dice:.4f}"
        )


def zoom_out_footprints() -> None:
    """The region, in 1 mm voxels, a full-strength 0.85 zoom-out of each crop reads."""
    for patch in (128, 256):
        crop = math.ceil(CROP_MARGIN * patch)
        footprint = Warp((0.85, 0.85, 0.85)).footprint((crop,) * 3)
        print(f"{patch}^3 patch: {crop}^3 crop, a 0.85 zoom-out reads {footprint[0]}^3 voxels")


def main() -> None:
    """Print both figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).parents[1] / ".." / "shared/data/ibsi-sts-ct"
    )
    args = parser.parse_args()
    zoom_out_footprints()
    if (args.data / "labelsTr").is_dir():
        label_differences(args.data)
    else:
        print(f"no labels under {args.data}: label figures skipped")


if __name__ == "__main__":
    main()
