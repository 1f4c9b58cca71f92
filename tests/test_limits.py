"""Limits: the largest supported sizes, exact 64-bit size arithmetic, and MemoryError/ValueError
instead of crashes when sizes are too large.

What is supported (docs/guarantees.md): every GEMM extent must fit OpenBLAS's 32-bit
indices, so T·N, T·N·C, T·N·G·H and T·N·D·H must each be at most 2^31 − 1 (ValueError naming the
product otherwise); within that, memory is the only limit. Buffers themselves may exceed 2^31
elements (a training cache holds ~7·T·N·H per layer-direction): every offset in the driver and the
kernels is int64. A run with a > 2^31-element buffer needs > 8 GB, too much for CI, so the
sizing is proven exact here instead, against Python's unbounded integers.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.core import validation as V

BLAS_MAX = 2**31 - 1
CELL_CODE = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}


def expected_cache(cell, T, N, H, L, D, dropout):
    """docs/design.md ("Memory"): Σ_l T·N·D·H·(1 + dropout between layers) + Σ_{l,d} T·N·H·g + initial states."""
    g = {"lstm": 5, "gru": 4}.get(cell, 0)
    total = 0
    for l in range(L):
        total += T * N * D * H * (2 if dropout and l < L - 1 else 1) + D * T * N * H * g
    return total + L * D * N * H * (2 if cell == "lstm" else 1)


@pytest.mark.parametrize("cell", list(CELL_CODE))
@pytest.mark.parametrize("T,N,H,L,D", [
    (2**31 - 1, 1, 1, 1, 1),          # T·N at the BLAS limit, cache above 2^31 elements
    (2**20, 2**11, 1, 3, 2),          # T·N·D·H = 2^32
    (2**17, 2**13, 2**5, 2, 2),       # ~2^40 elements
    (2**25, 2**20, 2**8, 4, 2),       # ~2^60 elements: still exact
])
@pytest.mark.parametrize("dropout", [False, True])
def test_cache_size_is_exact_beyond_32_bits(cell, T, N, H, L, D, dropout):
    got = F._config(cell, 3, H, L, D == 2, True, np.float32).cache_size(T, N, dropout)
    assert got == expected_cache(cell, T, N, H, L, D, dropout)


@pytest.mark.parametrize("cell", list(CELL_CODE))
@pytest.mark.parametrize("training", [False, True])
def test_scratch_size_does_not_wrap_beyond_32_bits(cell, training):
    """The scratch holds at least the input projection T·N·G·H per direction (inference) and the
    double buffer of layer outputs 2·T·N·D·H (L > 1): sizes past 2^31 and 2^40 stay exact lower
    bounds (a 32-bit intermediate would wrap them)."""
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    for T, N, H in [(2**20, 2**10, 2**4), (2**24, 2**12, 2**6)]:
        L, D = 2, 2
        got = F._config(cell, 3, H, L, D == 2, True, np.float32).scratch_size(T, N, training, False)
        low = (2 * T * N * D * H if training else D * T * N * G * H + 2 * T * N * D * H)
        assert low > 2**31
        assert low <= got < 2 * low + 2**30


def test_blas_limit_is_exactly_32_bit():
    V.check_blas_sizes("f", x=BLAS_MAX)
    with pytest.raises(ValueError, match=r"f: x = 2147483648 exceeds the supported maximum 2147483647"):
        V.check_blas_sizes("f", x=BLAS_MAX + 1)


def _huge(shape, dtype=np.float32):
    """An array of `shape` that takes no memory (zero strides): validation must reject it first."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))


@pytest.mark.parametrize("shape,cls,H,product", [
    ((2**31, 1, 1), fastrnn.RNN, 1, "T*N"),            # T·N over the limit
    ((2**16, 2**15, 1), fastrnn.GRU, 1, "T*N"),
    ((2**20, 2**10, 3), fastrnn.RNN, 1, "T*N*C"),      # T·N fits, T·N·C does not
    ((2**20, 2**8, 1), fastrnn.LSTM, 2**9, "T*N*G*H"),  # only with the 4 gates of W_hh
    ((2**31, 2**29, 1), fastrnn.LSTM, 1, "T*N"),       # T·N = 2^60 (numpy's largest float32 shape)
])
def test_sizes_beyond_the_limits_raise_value_error(shape, cls, H, product):
    layer = cls(shape[2], H)
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.forward: {product.replace('*', '[*]')} = \d+ exceeds"):
        layer(_huge(shape))


def test_parameter_sizes_beyond_int64_raise_value_error():
    # 4·2^62 · 2^62 elements: the element count overflows int64 (numpy refuses the shape).
    with pytest.raises(ValueError):
        fastrnn.LSTM(2**62, 2**62)
    with pytest.raises(MemoryError):  # representable but far beyond memory
        fastrnn.LSTM(1, 2**20)


SANITIZED = any(k in os.environ for k in ("ASAN_OPTIONS", "FASTRNN_SANITIZE")) or "asan" in os.environ.get(
    "LD_PRELOAD", "")


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer reserves terabytes of address space (RLIMIT_AS)")
@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_scratch_allocation_failure_raises_memory_error(phase, tmp_path):
    """The C++ scratch cannot be allocated while everything NumPy allocates fits (an address-space
    limit set just before the call): std::bad_alloc must arrive as MemoryError, nothing must be
    half-written, and the process must keep working afterwards."""
    code = textwrap.dedent(f"""
        import resource, numpy as np, fastrnn
        fastrnn.set_num_threads(1)
        small = fastrnn.GRU(2, 3, rng=0)
        x_small = np.ones((4, 2, 2), np.float32)
        want = small(x_small)[0]
        # A 2-layer RNN, T*N = 2^21 rows, H = 16: outputs 128 MiB. Forward (inference) scratch:
        # input projection + double buffer of layer outputs, 384 MiB. Backward: grad_x tiny,
        # scratch (gate gradients + double buffer of layer gradients) 384 MiB; the training
        # forward's 128 MiB scratch, which the thread keeps, is freed first: 328 MiB free.
        layer = fastrnn.RNN(1, 16, num_layers=2, rng=0)
        x = np.ones((2**10, 2**11, 1), np.float32)
        if "{phase}" == "backward":
            out, _ = layer(x)
            grad = np.ones_like(out)
        else:
            layer.eval()

        def limit(extra):
            with open("/proc/self/status") as f:
                vm = [int(l.split()[1]) for l in f if l.startswith("VmSize")][0] * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.RLIM_INFINITY))

        limit(200 * 2**20)
        before = {{k: g.copy() for k, g in layer.grads.items()}}
        try:
            layer(x) if "{phase}" == "forward" else layer.backward(grad)
        except MemoryError as exc:
            print("MemoryError:", exc)
        else:
            raise SystemExit("no MemoryError")
        assert all(np.array_equal(layer.grads[k], g) for k, g in before.items()), "gradients half-written"
        assert np.array_equal(small(x_small)[0], want)
        print("still works")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(
        os.path.abspath(fastrnn.__file__))), os.environ.get("PYTHONPATH", "")] if p))
    # cwd: not the checkout, whose fastrnn/ sources would shadow the package under test.
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MemoryError:" in res.stdout and "still works" in res.stdout
