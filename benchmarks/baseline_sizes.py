"""Parameters of the baselines at their published sizes for 128^3 crops, built, not run.

.venv/bin/python benchmarks/baseline_sizes.py
"""

from __future__ import annotations

from sam3d.baselines import build_baseline, nnunet_plan


def main() -> None:
    """Print the plan of DynUNet and each network's parameter count."""
    crop = (128, 128, 128)
    plan = nnunet_plan(crop)
    print(
        f"nnU-Net plan for {crop}: filters {plan.filters}, strides {plan.strides[1:]}, "
        f"deep-supervision heads {plan.deep_supervision_heads}"
    )
    for network in ("dynunet", "swinunetr", "unetr"):
        net = build_baseline(network, crop)  # on the CPU, not run (SwinUNETR cannot be built on "meta")
        print(f"{network}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
