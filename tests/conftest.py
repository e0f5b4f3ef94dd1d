from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach for the network in tests, and keep built checkpoints out of the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("AUDIOLDM2_FAST_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "test-checkpoints"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "inductor"))

from support import FAST


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from audioldm2_fast.checkpoints.tiny import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


@pytest.fixture
def make_generator(tmp_path):
    from audioldm2_fast import Generator
    from audioldm2_fast.config.compose import compose_config

    def make(*overrides: str, out: Path | None = None):
        cfg = compose_config([*FAST, f"output.dir={out or tmp_path / 'out'}", *overrides])
        return Generator(cfg)

    return make


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
