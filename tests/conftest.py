"""Shared test fixtures: the repository root on sys.path and the reference material beside the checkout."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The authors' numbers live in ../shared/reference beside a developer's checkout; a user's clone has no such folder.
REFERENCE_DIR = Path(os.environ.get("MUDIFF_REFERENCE", ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference folder, or skip when this checkout has none (a user's clone)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference material not found at {REFERENCE_DIR} (only developer checkouts have it)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def small_ref(reference_dir: Path) -> dict:
    """Weights, inputs and outputs of the original code for the small configuration."""
    path = reference_dir / "fixtures" / "small_ref.pt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def schedule_ref(reference_dir: Path) -> dict:
    """Every schedule coefficient of the original for T = 4 and T = 2."""
    path = reference_dir / "fixtures" / "schedule_ref.pt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)
