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
def input_gemm():
    """Puts back the input-product choice the process started with: _input_gemm() reports the
    resolved path ("own" or "blas"), and setting that would pin it where it was "detect" (per ISA)."""
    isa = fastrnn.get_isa()
    yield
    env = os.environ.get("FASTRNN_INPUT_GEMM")
    fastrnn._C._set_input_gemm(env if env in ("own", "blas") else "detect")
    fastrnn.set_isa(isa)


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
