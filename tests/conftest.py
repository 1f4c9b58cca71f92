import os

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
def two_threads():
    """fastrnn on 2 threads for the test, the previous count restored after it."""
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    yield
    fastrnn.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _run_outside_the_source_tree(tmp_path_factory):
    """Tests (and the `python -m fastrnn` / `python -c` subprocesses they start) run from an empty
    directory, so the installed fastrnn is imported, never the source checkout's `fastrnn/` that
    the current directory would otherwise shadow it with."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
