from pathlib import Path

import pytest
import torch

from moelab.checkpoints import save_checkpoint
from moelab.layers import ExpertConfig, MoEConfig, MoELayer, RouterConfig


@pytest.fixture
def snapshot():
    """A function giving every file in a directory (hidden ones included) and its bytes."""
    def files(directory: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    return files


@pytest.fixture
def small_layer() -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(3, 2, MoEConfig(num_experts=4, router=RouterConfig(top_k=2),
                                    experts=ExpertConfig(hidden=8)))


@pytest.fixture
def saved(tmp_path, small_layer) -> Path:
    """A checkpoint of ``small_layer`` in ``tmp_path / "ckpt"``."""
    return save_checkpoint(small_layer, tmp_path / "ckpt", metadata={"step": 7})
