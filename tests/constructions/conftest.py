import pytest
import torch


@pytest.fixture(autouse=True)
def _no_grad():
    """Constructions are evaluated, never trained, in these tests."""
    with torch.no_grad():
        yield
