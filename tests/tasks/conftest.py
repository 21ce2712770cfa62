import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """The task tests run many tiny tensor ops; on a busy machine intra-op threads only add
    synchronisation waits, so each test runs single-threaded (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
