"""The demo's training recipe learns: the tiny network segments held-out phantoms after `make demo`'s run."""

from __future__ import annotations

import json

import pytest
from cli_helpers import SYNTHETIC_CONFIG

from sam3d.cli import main
from sam3d.data.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow

# `make demo` reached 0.83-0.89 held-out Dice before and after this test was written; a recipe that only
# learns for lucky seeds stays near 0.03. Half the demo's 12 epochs keeps CI short: 0.854 and 0.836
# held-out Dice for seeds 0 and 1 at 6 epochs (at ff0ef42; `pytest -m slow tests/test_learning.py -rP`
# prints them).
MIN_HELD_OUT_DICE = 0.7
EPOCHS = 6


@pytest.mark.parametrize("seed", [0, 1])
def test_the_demo_recipe_segments_held_out_cases_for_more_than_one_seed(seed, tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", num_cases=24, seed=0)
    args = [
        *("-c", str(SYNTHETIC_CONFIG), "--data.root", str(root), "--data.cache_dir", str(tmp_path / "cache")),
        *("--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--seed_everything", str(seed)),
        *("--trainer.max_epochs", str(EPOCHS)),
    ]
    main(["fit", *args])
    main(["test", *args, "--ckpt_path", "best", "--evaluation.first_click", "center"])
    summary = json.loads(next(tmp_path.glob("runs/**/test/summary.json")).read_text())
    assert summary["cases"] == 5
    print(f"seed {seed}, {EPOCHS} epochs: held-out Dice {summary['final']['dice']['mean']:.3f}")
    assert summary["final"]["dice"]["mean"] > MIN_HELD_OUT_DICE
