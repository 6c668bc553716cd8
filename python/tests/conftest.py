import pytest
import torch

# The test problems are tiny: one intra-op thread is fastest, and it keeps the suite
# quick on a loaded 2-core CI machine (where spinning OpenMP threads are slow).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
