import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see robust_abstain/__init__.py
# pieces of work in this process (models that count their calls see them all); the tests of the
# worker processes set RA_WORKERS themselves (test_parallel.py, test_resume.py, test_pipeline.py)
os.environ.setdefault("RA_WORKERS", "1")

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def tiny_data():
    """A small 2-class, 2-D problem in [0, 1]^2 with a Prepared wrapper."""
    from robust_abstain.data import Prepared, split_train_val
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 2, generator=g)
    y = (x[:, 0] + 0.1 * torch.randn(400, generator=g) > 0.5).long()
    xtr, ytr, xva, yva = split_train_val(x[:300], y[:300], 0.2, 0)
    return Prepared("tiny", xtr, ytr, xva, yva, x[300:], y[300:], num_classes=2, mean=[0.5, 0.5],
                    std=[0.29, 0.29])
