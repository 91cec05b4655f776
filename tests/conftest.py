"""Shared test set-up: no network, no W&B, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_ct_root() -> Path:
    """The real IBSI soft-tissue sarcoma CT scans beside the checkout, or skip."""
    root = SHARED_DATA / "ibsi-sts-ct"
    if not root.is_dir():
        pytest.skip(f"real CT test data not found at {root} (only present beside the development checkout)")
    return root
