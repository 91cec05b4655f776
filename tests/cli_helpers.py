"""Helpers shared by the CLI-level tests."""

from __future__ import annotations

from pathlib import Path

SYNTHETIC_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


def synthetic_cli_args(subcommand: str, root: Path, workdir: Path, *extra: str) -> list[str]:
    """``sam3d`` arguments for a quick CPU run of ``configs/synthetic.yaml`` with everything under ``workdir``."""
    settings = {
        "--data.root": root,
        "--data.cache_dir": workdir / "cache",
        "--data.num_workers": 0,
        "--data.samples_per_volume": 1,
        "--data.batch_size": 1,
        "--trainer.default_root_dir": workdir,
        "--trainer.logger.init_args.save_dir": workdir / "runs",
        "--trainer.max_epochs": 1,
        "--trainer.check_val_every_n_epoch": 1,
    }
    return [
        subcommand,
        "--config",
        str(SYNTHETIC_CONFIG),
        *(str(x) for kv in settings.items() for x in kv),
        *extra,
    ]
