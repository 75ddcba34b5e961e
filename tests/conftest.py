from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Test models are tiny: intra-op thread start-up dominates, and on a busy 2-core machine
    (CI runs the suite beside services) oversubscribed threads make HVPs ~100x slower."""
    try:
        import torch
    except ImportError:  # parts of the suite that never import torch
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
