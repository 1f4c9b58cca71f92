"""The cells' activation functions on every ISA: the documented error bounds, NaN and +-inf.

float32 vector code uses a [13/6] rational tanh and sigmoid(x) = (1 + tanh(x/2)) / 2; the
contract is a max absolute error <= 2e-6 against the float64 function over the whole range.
float64 uses libm on every ISA (full accuracy).
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _C


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


REF = {"sigmoid": _sigmoid, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


def _grid():
    dense = np.linspace(-30, 30, 600_001)  # step 1e-4 across the curved part and the tails
    tiny = np.concatenate([-np.logspace(-30, 0, 301), np.logspace(-30, 0, 301)])
    huge = np.concatenate([-np.logspace(0, 38, 200), np.logspace(0, 38, 200)])
    return np.concatenate([dense, tiny, huge, [0.0, -0.0]])


@pytest.mark.parametrize("fn", ["sigmoid", "tanh", "relu"])
def test_float32_error_bound_and_special_values(isa, fn):
    x = _grid().astype(np.float32)
    # lengths that are not multiples of any vector width exercise the scalar tail too
    for n in (x.size, 7, 17, 33):
        y = _C._activation(fn, x[:n])
        err = np.max(np.abs(y.astype(np.float64) - REF[fn](x[:n].astype(np.float64))))
        assert err <= 2e-6, f"{isa} {fn}: max abs error {err:.3g}"
    special = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30] * 4, np.float32)
    y = _C._activation(fn, special)
    ref = REF[fn](special.astype(np.float64))
    assert np.isnan(y[2::5]).all()  # NaN propagates
    np.testing.assert_allclose(y[np.isfinite(ref)], ref[np.isfinite(ref)], atol=2e-6)
    if fn == "relu":
        assert y[0] == np.inf and y[1] == 0.0
    if fn in ("sigmoid", "tanh"):
        assert np.all((y[~np.isnan(y)] >= -1) & (y[~np.isnan(y)] <= 1))


@pytest.mark.parametrize("fn", ["sigmoid", "tanh", "relu"])
def test_float64_full_accuracy(isa, fn):
    x = _grid()
    y = _C._activation(fn, x)
    with np.errstate(over="ignore"):
        ref = REF[fn](x) if fn != "sigmoid" else 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(y, ref, rtol=1e-15, atol=1e-300)
    assert np.isnan(_C._activation(fn, np.array([np.nan])))[0]


def test_rational_tanh_is_odd_and_monotone(isa):
    x = np.linspace(0, 12, 100_001, dtype=np.float32)
    y = _C._activation("tanh", x)
    np.testing.assert_array_equal(_C._activation("tanh", -x), -y)
    assert np.all(np.diff(y) >= -6e-7)  # wiggles stay within twice the error bound (a few ulp near 1)
    assert fastrnn.get_isa() == isa


def test_rows_gemm_on_every_blocking_branch(tmp_path):
    """tests/cpp/rows_gemm.cpp: the streaming products with the weights read in place
    (csrc/kernels/gemm.h) on the portable branch, on the AVX-512 branch through an array-backed
    16-lane vector (so it runs on any CPU), and on AVX2 where this CPU has it: values against a
    float64 reference, bit-identity whatever the slots and the split of the rows, and no access
    past the arrays (guard pages)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    repo = Path(__file__).resolve().parents[1]
    flags = ["-mavx2", "-mfma", "-DWITH_AVX2"] if "avx2" in fastrnn.available_isas() else []
    exe = tmp_path / "rows_gemm"
    build = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{repo / 'csrc'}", *flags,
                            str(repo / "tests" / "cpp" / "rows_gemm.cpp"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok "), run.stdout + run.stderr
