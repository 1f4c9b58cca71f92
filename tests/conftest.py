import numpy as np
import pytest

import fastrnn


@pytest.fixture(params=fastrnn.available_isas())
def isa(request):
    """Runs the test once per ISA this machine supports (scalar always)."""
    previous = fastrnn.get_isa()
    fastrnn.set_isa(request.param)
    yield request.param
    fastrnn.set_isa(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
