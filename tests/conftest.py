"""Shared fixtures: seeded simulated layers and small model checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from segmentation.simulator import SimBuild, SimLayer

REPO = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO / "data" / "models" / "layerwatch-unet.pt"


@pytest.fixture(scope="session")
def sim_build() -> SimBuild:
    """A seeded 256x256 build of 30 layers (seed 4242 is in no training stream)."""
    return SimBuild(4242, 256, 256, 30)


@pytest.fixture(scope="session")
def sim_layer(sim_build: SimBuild) -> SimLayer:
    return sim_build.layer(20)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network saved as a checkpoint: exercises the plumbing, not the accuracy."""
    import torch

    from segmentation.model import DEFAULT_ARCH, create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model(DEFAULT_ARCH)
    # a few batches in train mode give the batch-norm layers non-trivial statistics
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, model.spec.in_channels, 64, 64))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model, DEFAULT_ARCH, {"note": "untrained test model"})
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# helpers shared by unit and integration tests (tests/gcode.py, tests/peers.py, tests/klippy_standin.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))
