import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class LinearField(torch.nn.Module):
    """F(y) = A y on vectors (batch, d)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, y):
        return y @ self.A.T


@pytest.fixture
def linear_field():
    return LinearField
