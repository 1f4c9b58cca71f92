"""pytest-benchmark suites: fastrnn per cell × ISA × shape × mode, torch.nn as the reference group.

Not part of the normal test run (``testpaths = ["tests"]``). Run from the repository root:

    PYTHONPATH=$PWD python -m pytest bench --benchmark-only
    FASTRNN_BENCH_SHAPES="A B F" FASTRNN_BENCH_THREADS=2 python -m pytest bench --benchmark-only

Shapes are names of the reference shapes or ``T,N,C,H`` (default: A and B, small and medium);
results are grouped per cell/shape/mode so every ISA sits next to torch. The comparison with
ratios, GFLOP/s and several peers is ``python -m fastrnn bench``.
"""
import os

import pytest

import fastrnn
from fastrnn.bench import engine as _bench

SHAPES = [_bench.parse_shape(s) for s in os.environ.get("FASTRNN_BENCH_SHAPES", "A B").split()]
THREADS = int(os.environ.get("FASTRNN_BENCH_THREADS", "1"))


@pytest.fixture(params=fastrnn.available_isas())
def isa(request):
    previous = fastrnn.get_isa()
    fastrnn.set_isa(request.param)
    yield request.param
    fastrnn.set_isa(previous)


def _bench_impl(benchmark, impl_class, cell, shape, mode):
    weights, x = _bench.make_problem(cell, shape)
    benchmark.group = f"{cell} {shape.label} {mode} {THREADS}t"
    benchmark.extra_info["gflop"] = _bench.flops(cell, shape, mode) / 1e9
    with _bench._threads(THREADS):
        impl = impl_class(cell, mode, weights, x, THREADS)
        benchmark(impl.step)


@pytest.mark.parametrize("mode", _bench.MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("cell", _bench.CELLS)
def test_fastrnn(benchmark, isa, cell, shape, mode):
    _bench_impl(benchmark, _bench.FastrnnImpl, cell, shape, mode)


@pytest.mark.parametrize("mode", _bench.MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("cell", _bench.CELLS)
def test_torch(benchmark, cell, shape, mode):
    pytest.importorskip("torch")
    _bench_impl(benchmark, _bench.TorchImpl, cell, shape, mode)
