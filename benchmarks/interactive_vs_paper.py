"""Clicks-vs-Dice curves of the tiny network trained in the paper's click mode and in the interactive mode.

Every arm trains with the same budget (the same epochs, patches, seed and optimiser: only the training
prompts differ), then ``sam3d test`` scores each on the held-out fold: ``--protocol paper`` (default) with one
first click and four correction clicks, giving Dice/NSD after each click and the area under the clicks curve
(DSC-AUC, NSD-AUC); ``--protocol cvpr25`` with the CVPR 2025 challenge's box, five correction clicks and the
previous mask (a network without the box prompt gets a click at the box's centre).

* ``paper``: ``click_mode: reference``, 10 clicks in the tumour and 20 anywhere, all labelled 1 (the authors').
* ``interactive``: ``configs/clicks/interactive.yaml``: a first click, then up to 4 simulated corrections,
  with click maps (the prompt encoder is told where each click is).
* ``interactive-without-maps`` (optional): the same training clicks on the paper's network, whose clicks
  carry only the features under them.
* ``interactive-mask``: the interactive arm whose network also takes its previous prediction
  (``configs/prompts/mask.yaml``).
* ``box``: the interactive arm with boxes and the previous mask (``configs/prompts/box.yaml``): training steps
  start from a click or a simulated box.
* ``interactive-distance``: the interactive arm with distance-transform click maps instead of Gaussian ones
  (``configs/prompts/distance_clicks.yaml``).
* ``labelled`` (optional): 10 positive and 20 negative clicks, no correction rounds.

Run (CPU, synthetic phantoms; ~1 h on two shared cores with the defaults):
``.venv/bin/python benchmarks/interactive_vs_paper.py --workdir /tmp/sam3d-interactive``
Other data: ``--root DIR --target-label N`` (an MSD-style folder), ``--leave-out ID ...`` to test those cases
after training on all the others (no validation: each arm tests its last checkpoint anyway), ``--extra ...``
for any other ``sam3d`` argument; everything else as ``configs/synthetic.yaml``. The real CT of ``../shared``:
``... --root ../shared/data/ibsi-sts-ct --leave-out sts_002 --epochs 30 --repeats 5 --extra
--data.target_spacing 2.0 --data.samples_per_volume 8`` (2 mm voxels: the sarcomas outgrow a 64 mm crop).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sam3d.data import make_synthetic_dataset
from sam3d.data.catalog import discover
from sam3d.data.splits import save_splits, split_entry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARMS = {
    "paper": [
        "--data.click_mode",
        "reference",
        "--data.num_positive_clicks",
        "10",
        "--data.num_context_clicks",
        "20",
    ],
    "interactive": ["-c", str(CONFIGS / "clicks" / "interactive.yaml")],
    "interactive-without-maps": [
        "-c",
        str(CONFIGS / "clicks" / "interactive.yaml"),
        "--model.init_args.click_maps",
        "false",
    ],
    "interactive-mask": [
        "-c",
        str(CONFIGS / "clicks" / "interactive.yaml"),
        "-c",
        str(CONFIGS / "prompts" / "mask.yaml"),
    ],
    "box": ["-c", str(CONFIGS / "clicks" / "interactive.yaml"), "-c", str(CONFIGS / "prompts" / "box.yaml")],
    "interactive-distance": [
        "-c",
        str(CONFIGS / "clicks" / "interactive.yaml"),
        "-c",
        str(CONFIGS / "prompts" / "distance_clicks.yaml"),
    ],
    "labelled": [
        "--data.click_mode",
        "labelled",
        "--data.num_positive_clicks",
        "10",
        "--data.num_context_clicks",
        "20",
    ],
}
EVALUATION = {
    "paper": [
        "--evaluation.num_clicks",
        "1",
        "--evaluation.refinement_clicks",
        "4",
        "--evaluation.protocol",
        "paper",
    ],
    "cvpr25": ["--evaluation.protocol", "cvpr25"],
}


def _sam3d(args: list[str], log: Path) -> float:
    """Run ``sam3d`` in a fresh process, its output appended to ``log``; returns the seconds it took."""
    start = time.perf_counter()
    with open(log, "a") as stream:
        subprocess.run(
            [sys.executable, "-m", "sam3d", *args], stdout=stream, stderr=subprocess.STDOUT, check=True
        )
    return time.perf_counter() - start


def run_arm(name: str, common: list[str], args: argparse.Namespace) -> dict:
    """Train and test one arm; its summary.json with the fit and test times."""
    folder = args.workdir / name
    run = [*common, "--trainer.default_root_dir", str(folder), *ARMS[name]]
    log = args.workdir / f"{name}.log"
    fit_seconds = None if args.test_only else _sam3d(["fit", *run], log)
    evaluation = EVALUATION[args.protocol]
    if args.protocol == "paper":
        evaluation = [
            *evaluation,
            "--evaluation.first_click",
            args.first_click,
            "--evaluation.repeats",
            str(args.repeats),
        ]
    test_seconds = _sam3d(
        ["test", *run, *evaluation, "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")], log
    )
    result = json.loads((folder / "test" / "summary.json").read_text())
    result["seconds"] = {"fit": fit_seconds, "test": test_seconds}
    (folder / f"summary-{args.protocol}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def leave_out_split(root: Path, test_ids: list[str], path: Path) -> Path:
    """A one-fold split file of an MSD-style folder: ``test_ids`` tested, every other case trained on."""
    catalog = discover(root, "msd")
    unknown = sorted(set(test_ids) - set(catalog.cases))
    if unknown:
        raise SystemExit(
            f"--leave-out: no case {', '.join(unknown)} under {root} (cases: {', '.join(sorted(catalog.cases))})"
        )
    fold = {
        "train": [split_entry(catalog, case, root) for case in sorted(catalog.cases) if case not in test_ids],
        "val": [],
        "test": [split_entry(catalog, case, root) for case in test_ids],
    }
    return save_splits(path, "msd", f"leave out {', '.join(test_ids)}", [fold])


def table(results: dict[str, dict]) -> str:
    """Markdown table: Dice after 1, 3 and 5 clicks, DSC-AUC and NSD-AUC (mean over cases and repeats)."""
    lines = [
        "| training clicks | Dice, 1 click | Dice, 3 clicks | Dice, 5 clicks | DSC-AUC (0-4) | NSD-AUC (0-4) | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        by_clicks = result["by_clicks"]
        dice = [by_clicks[str(n)]["dice"]["mean"] if str(n) in by_clicks else float("nan") for n in (1, 3, 5)]
        auc = result["click_auc"]
        lines.append(
            f"| {name} | {' | '.join(f'{d:.3f}' for d in dice)} | {auc['dice']['mean']:.3f} | "
            f"{auc['nsd']['mean']:.3f} | {result['seconds']['fit'] or float('nan'):.0f} |"
        )
    return "\n".join(lines)


def cvpr25_table(results: dict[str, dict]) -> str:
    """Markdown table of the ``cvpr25`` protocol: Dice of the box step, final Dice and NSD, DSC-AUC, NSD-AUC."""
    lines = [
        "| training | Dice, box step | Dice, 5 clicks | NSD, 5 clicks | DSC-AUC (0-4) | NSD-AUC (0-4) | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        scores = result["cvpr25"]
        box_step = result["by_clicks"]["0"]["dice"]["mean"]
        lines.append(
            f"| {name} | {box_step:.3f} | {scores['dsc_final']['mean']:.3f} | {scores['nsd_final']['mean']:.3f} | "
            f"{scores['dsc_auc']['mean']:.3f} | {scores['nsd_auc']['mean']:.3f} | "
            f"{result['seconds']['fit'] or float('nan'):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="data, runs and logs go here")
    parser.add_argument(
        "--root", type=Path, help="an MSD-style dataset; default: synthetic phantoms made here"
    )
    parser.add_argument("--target-label", type=int, default=1)
    parser.add_argument("--num-cases", type=int, default=24, help="synthetic phantoms to make")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="test repeats (random first clicks)")
    parser.add_argument("--first-click", choices=["random", "center"], default="random")
    parser.add_argument(
        "--protocol",
        choices=list(EVALUATION),
        default="paper",
        help="paper: a first click and 4 corrections; cvpr25: the CVPR 2025 challenge's box and 5 corrections",
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["paper", "interactive"])
    parser.add_argument("--leave-out", nargs="+", default=[], help="test these case ids, train on the rest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--test-only",
        action="store_true",
        help="test each arm's existing <workdir>/<arm>/checkpoints/last.ckpt",
    )
    parser.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="more sam3d arguments for every run"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = args.root
    if root is None:
        root = args.workdir / "data"
        if not (root / "dataset.json").is_file():
            make_synthetic_dataset(root, num_cases=args.num_cases, seed=args.seed)
    common = [
        "-c",
        str(CONFIGS / "synthetic.yaml"),
        "--data.root",
        str(root),
        "--data.target_label",
        str(args.target_label),
        "--data.cache_dir",
        str(args.workdir / "cache"),
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.logger",
        "false",
        "--seed_everything",
        str(args.seed),
        *args.extra,
    ]
    if args.leave_out:
        split = leave_out_split(root.resolve(), args.leave_out, args.workdir / "split.json")
        common += ["--data.split_file", str(split), "--data.fold", "0"]
    results = {}
    for name in args.arms:
        results[name] = run_arm(name, common, args)
        print(f"{name}: done in {sum(filter(None, results[name]['seconds'].values())):.0f} s", flush=True)
    (args.workdir / f"results-{args.protocol}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(cvpr25_table(results) if args.protocol == "cvpr25" else table(results))


if __name__ == "__main__":
    main()
