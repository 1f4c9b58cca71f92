"""int8 building blocks (csrc/kernels/int8.h): per-row symmetric weight quantization, dynamic
per-row activation quantization with a zero point of 128, and the packed uint8 x int8 GEMM with
int32 accumulation, on the portable path (every CPU) and the native AVX512-VNNI path where the
CPU has it. Both are checked against a NumPy model of the same arithmetic, bitwise, and against
the float64 product within the quantization error."""
from fractions import Fraction

import numpy as np
import pytest

import fastrnn
from fastrnn import _C

FEATURES = fastrnn.precision_features()
ISAS = fastrnn.available_isas()
# the native paths this CPU can run: AVX512-VNNI, and AVX-VNNI (256-bit, also on AVX2-only CPUs)
NATIVE = ([n for n in ("avx512_vnni",) if FEATURES[n] and "avx512" in ISAS]
          + [n for n in ("avx_vnni",) if FEATURES[n] and "avx2" in ISAS])
PATHS = ["portable"] + NATIVE


def scales(a):
    """max |row| / 127 in float32; NaN where a row holds a NaN."""
    with np.errstate(invalid="ignore"):
        m = np.abs(a).max(axis=1)
    return (m / np.float32(127)).astype(np.float32)


def codes(a, s):
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.rint(a / s[:, None]).astype(np.float32)  # float32 division, ties to even
    r = np.where(np.isnan(r), 0, np.clip(r, -127, 127))
    return np.where(s[:, None] == 0, 0, r).astype(np.int32)


def model(x, w):
    """The product as csrc/kernels/int8.h defines it, in NumPy."""
    t, s = scales(x), scales(w)
    qx, qw = codes(x, t) + 128, codes(w, s)
    acc = qx.astype(np.int64) @ qw.T.astype(np.int64) - 128 * qw.sum(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        return (acc.astype(np.float32) * t[:, None]) * s[None, :]


def to_float32(exact):
    """A Fraction rounded once to float32 (nearest, ties to even): through float64 unless that
    lands on a float32 midpoint, where the exact value decides."""
    f = np.float32(float(exact))
    lo, hi = (np.nextafter(f, np.float32(-np.inf)), f) if Fraction(float(f)) > exact else (f, np.nextafter(f, np.float32(np.inf)))
    mid = (Fraction(float(lo)) + Fraction(float(hi))) / 2
    if exact == mid:
        return lo if int(lo.view(np.uint32)) % 2 == 0 else hi
    return lo if exact < mid else hi


def run(x, w, path, c0=None):
    packed, scale, wsum = _C._int8_quantize_weights(w)
    q, t = _C._int8_quantize_rows(x, path)
    rows = w.shape[0]
    c = np.zeros((x.shape[0], scale.size), np.float32)
    if c0 is not None:
        c[:, :rows] = c0
    with np.errstate(invalid="ignore", over="ignore"):
        _C._int8_gemm(q, t, packed, scale, wsum, c, c0 is not None, path)
    return c[:, :rows], (packed, scale, wsum, q, t)


def test_the_active_path_follows_the_isa():
    before = fastrnn.get_isa()
    try:
        fastrnn.set_isa("scalar")
        assert _C._int8_path() == "portable"
        if "avx2" in ISAS:
            fastrnn.set_isa("avx2")
            assert _C._int8_path() == ("avx_vnni" if FEATURES["avx_vnni"] else "portable")
        if "avx512" in ISAS:
            fastrnn.set_isa("avx512")
            want = "avx512_vnni" if FEATURES["avx512_vnni"] else "avx_vnni" if FEATURES["avx_vnni"] else "portable"
            assert _C._int8_path() == want
    finally:
        fastrnn.set_isa(before)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("N,rows,depth", [(1, 16, 4), (1, 1, 1), (3, 17, 7), (6, 64, 32), (7, 65, 33),
                                          (13, 100, 64), (16, 48, 130), (25, 512, 256)])
def test_gemm_matches_the_model_and_the_float64_product(path, N, rows, depth):
    r = np.random.default_rng(N * 1000 + rows + depth)
    x = r.standard_normal((N, depth)).astype(np.float32)
    w = (r.standard_normal((rows, depth)) * 0.1).astype(np.float32)
    c, (packed, scale, wsum, q, t) = run(x, w, path)
    np.testing.assert_array_equal(c, model(x, w))
    # the pieces as the model has them
    np.testing.assert_array_equal(t, scales(x))
    np.testing.assert_array_equal(q[:, :depth], codes(x, t) + 128)
    assert (q[:, depth:] == 128).all() and q.shape[1] % 4 == 0
    np.testing.assert_array_equal(scale[:rows], scales(w))
    np.testing.assert_array_equal(wsum[:rows], codes(w, scales(w)).sum(axis=1))
    assert (scale[rows:] == 0).all() and (wsum[rows:] == 0).all()
    # within the quantization error of the float64 product: |x - t qx| <= t/2, |w - s qw| <= s/2
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    s64, t64 = scale[:rows].astype(np.float64), t.astype(np.float64)
    bound = (0.5 * np.abs(x).astype(np.float64).sum(1)[:, None] * s64[None, :]
             + 0.5 * t64[:, None] * np.abs(w).astype(np.float64).sum(1)[None, :]
             + 0.25 * depth * t64[:, None] * s64[None, :])
    assert (np.abs(c - exact) <= bound * (1 + 1e-6) + 4 * 2.0**-24 * np.abs(c)).all()


@pytest.mark.parametrize("path", PATHS)
def test_gemm_accumulates(path):
    r = np.random.default_rng(3)
    x = r.standard_normal((5, 20)).astype(np.float32)
    w = r.standard_normal((40, 20)).astype(np.float32)
    c0 = r.standard_normal((5, 40)).astype(np.float32)
    c, _ = run(x, w, path, c0)
    # c0 + (float(sum) * t) * s with the last multiply and the add fused (one rounding), exactly
    t, s = scales(x), scales(w)
    acc = (codes(x, t) + 128).astype(np.int64) @ codes(w, s).T.astype(np.int64) - 128 * codes(w, s).sum(axis=1)
    y = acc.astype(np.float32) * t[:, None]
    want = np.array([[to_float32(Fraction(float(y[n, j])) * Fraction(float(s[j])) + Fraction(float(c0[n, j])))
                      for j in range(40)] for n in range(5)], np.float32)
    np.testing.assert_array_equal(c, want)
    assert not np.array_equal(c, c0 + model(x, w))  # so the test tells fused from unfused


@pytest.mark.parametrize("path", PATHS)
def test_zero_nan_and_infinite_rows(path):
    r = np.random.default_rng(4)
    x = r.standard_normal((4, 21)).astype(np.float32)
    x[0] = 0.0              # scale 0: exact zeros out
    x[1, 5] = np.nan        # NaN row: NaN out
    x[2, 7] = np.inf        # infinite scale: NaN or inf out, never a finite guess
    w = r.standard_normal((18, 21)).astype(np.float32)
    w[3] = 0.0
    c, (_, _, _, q, t) = run(x, w, path)
    assert (c[0] == 0).all() and t[0] == 0 and (q[0] == 128).all()
    assert np.isnan(c[1]).all() and np.isnan(t[1])
    assert not np.isfinite(c[2]).any()
    assert (c[3, 3] == 0) and np.isfinite(c[3]).all()
    want = model(x, w)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(want))
    np.testing.assert_array_equal(c[~np.isnan(c)], want[~np.isnan(want)])


@pytest.mark.skipif(not NATIVE, reason="needs AVX512-VNNI or AVX-VNNI")
@pytest.mark.parametrize("path", NATIVE or ["none"])
@pytest.mark.parametrize("N", [1, 2, 5, 6, 7, 12, 13])
@pytest.mark.parametrize("rows,depth", [(16, 4), (48, 17), (64, 64), (80, 100), (130, 255)])
def test_native_equals_portable_bitwise(path, N, rows, depth):
    r = np.random.default_rng(N * 7 + rows)
    x = (r.standard_normal((N, depth)) * 10.0 ** r.integers(-3, 4, (N, 1))).astype(np.float32)
    w = r.standard_normal((rows, depth)).astype(np.float32)
    x.flat[r.integers(0, x.size, 2)] = [1e-41, -0.0]  # a denormal and a negative zero
    if N > 2:
        x[1, depth // 2] = np.nan  # a NaN row: the same NaN bits out of every path
        x[2, 0] = np.inf
    nat, (_, _, _, qn, tn) = run(x, w, path)
    por, (_, _, _, qp, tp) = run(x, w, "portable")
    np.testing.assert_array_equal(qn, qp)
    np.testing.assert_array_equal(tn, tp)
    np.testing.assert_array_equal(nat.view(np.uint32), por.view(np.uint32))  # NaNs included
    if N > 2:
        assert np.isnan(nat[1]).all() and not np.isfinite(nat[2]).any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("N,rows,depth", [(1, 5, 8), (7, 17, 12), (3, 33, 20), (9, 100, 36)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_writes_only_the_columns_asked_for(path, N, rows, depth, accumulate):
    # c [N, rows] with rows not a multiple of 16: the last panel's outputs past `rows` would land
    # in the next row of c (row stride = rows), and after the last row in the guard
    r = np.random.default_rng(rows + depth)
    x = r.standard_normal((N, depth)).astype(np.float32)
    w = (r.standard_normal((rows, depth)) * 0.1).astype(np.float32)
    packed, scale, wsum = _C._int8_quantize_weights(w)
    q, t = _C._int8_quantize_rows(x, path)
    c0 = r.standard_normal((N, rows)).astype(np.float32)
    buf = np.full(N * rows + 64, 7.0, np.float32)
    c = buf[:N * rows].reshape(N, rows)
    c[...] = c0 if accumulate else -1.0
    _C._int8_gemm(q, t, packed, scale, wsum, c, accumulate, path)
    want, _ = run(x, w, path, c0 if accumulate else None)
    np.testing.assert_array_equal(c, want)
    assert (buf[N * rows:] == 7.0).all()


def test_gemm_output_must_be_the_callers_array():
    packed, scale, wsum = _C._int8_quantize_weights(np.ones((16, 8), np.float32))
    q, t = _C._int8_quantize_rows(np.ones((2, 8), np.float32))
    for c in (np.zeros((2, 16), np.float64), np.zeros((2, 32), np.float32)[:, ::2]):
        with pytest.raises(TypeError):
            _C._int8_gemm(q, t, packed, scale, wsum, c, False, "active")


def test_bad_arguments_are_refused():
    packed, scale, wsum = _C._int8_quantize_weights(np.ones((16, 8), np.float32))
    q, t = _C._int8_quantize_rows(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="expected q"):
        _C._int8_gemm(q, t, packed, scale, wsum, np.zeros((3, 16), np.float32), False, "active")
    with pytest.raises(ValueError, match="expected active, portable, avx512_vnni, avx_vnni"):
        _C._int8_quantize_rows(np.ones((2, 8), np.float32), "avx9")
    for name in ("avx512_vnni", "avx_vnni"):
        if name not in NATIVE:
            with pytest.raises(ValueError, match="does not have it"):
                _C._int8_quantize_rows(np.ones((2, 8), np.float32), name)
