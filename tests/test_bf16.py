"""bf16 building blocks (csrc/kernels/bf16.h): the rounding of float32 to bf16 and the packed GEMM
with float32 accumulation, on the portable path (every CPU) and the native AVX512-BF16 path
where the CPU has it. The portable path is an exact model of vcvtneps2bf16 / vdpbf16ps: checked
here against NumPy models written independently, and bitwise against the hardware."""
import os

import numpy as np
import pytest

import fastrnn
from fastrnn import _C

FEATURES = fastrnn.precision_features()
NATIVE = FEATURES["avx512_bf16"]
needs_native = pytest.mark.skipif(not NATIVE, reason="needs AVX512-BF16")
PATHS = ["portable"] + (["avx512_bf16"] if NATIVE else [])


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def is_intel():
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read(4096)
    except OSError:
        return False


# --- the model, in NumPy --------------------------------------------------------------------

def round_model(x):
    """float32 -> bf16 bits: nearest, ties to even (chosen by distances in float64), denormals
    to zero, NaN quiet."""
    with np.errstate(invalid="ignore", over="ignore"):  # signalling NaNs and inf - x
        return _round_model(np.asarray(x, np.float32))


def _round_model(x):
    b = x.view(np.uint32).astype(np.uint64)
    sign = b & 0x80000000
    exp = (b >> 23) & 0xFF
    low = b & 0xFFFF0000
    lo_val = low.astype(np.uint32).view(np.float32).astype(np.float64)
    # one bf16 ulp at x's exponent, in float64 (so rounding up past the largest finite is inf)
    ulp = np.ldexp(1.0, np.maximum(exp.astype(np.int64), 1) - 127 - 7)
    dist_lo = np.abs(x.astype(np.float64) - lo_val)
    up = (dist_lo > ulp / 2) | ((dist_lo == ulp / 2) & (((low >> 16) & 1) == 1))
    out = np.where(up, low + 0x10000, low) >> 16
    out = np.where(exp == 0, sign >> 16, out)                     # zero and denormals (DAZ)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    out = np.where(nan, (b >> 16) | 0x40, out)
    inf = (b & 0x7FFFFFFF) == 0x7F800000
    out = np.where(inf, b >> 16, out)
    return out.astype(np.uint16)


def to_f32(h):
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)


def gemm_model(a16, w16, c0=None):
    """The GEMM one pair at a time, odd element first, each sum rounded to float32 (for data whose
    sums and products stay in float32's normal range, where FTZ/DAZ never act)."""
    a = to_f32(a16).astype(np.float64)
    w = to_f32(w16).astype(np.float64)
    acc = np.zeros((a.shape[0], w.shape[0]), np.float32) if c0 is None else c0.copy()
    for q in range(a.shape[1] // 2):
        for e in (1, 0):
            k = 2 * q + e
            acc = (acc.astype(np.float64) + np.outer(a[:, k], w[:, k])).astype(np.float32)
    return acc


def gemm(a, w, path, c0=None):
    """C = A W^T through the hook: a [N, depth], w [rows, depth] float32 (rounded by the kernels)."""
    N, depth = a.shape
    rows = w.shape[0]
    dp = depth + depth % 2
    a16 = np.zeros((N, dp), np.uint16)
    a16[:, :depth] = _C._bf16_round(np.ascontiguousarray(a, np.float32), path)
    cols = -(-rows // 16) * 16
    c = np.zeros((N, cols), np.float32)
    if c0 is not None:
        c[:, :rows] = c0
    _C._bf16_gemm(a16, _C._bf16_pack(w), c, c0 is not None, path)
    return c[:, :rows], a16


# --- features --------------------------------------------------------------------------------

def test_precision_features_are_the_cpus():
    assert set(FEATURES) == {"avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni"}
    assert all(isinstance(v, bool) for v in FEATURES.values())
    flags = cpu_flags()
    if flags is None:
        pytest.skip("needs /proc/cpuinfo (Linux)")
    avx512 = "avx512" in fastrnn.available_isas()
    assert FEATURES["avx512_bf16"] == (avx512 and "avx512_bf16" in flags)
    assert FEATURES["avx512_vnni"] == (avx512 and "avx512_vnni" in flags)
    assert FEATURES["avx_vnni"] == ("avx2" in fastrnn.available_isas() and "avx_vnni" in flags)
    # Linux lists amx_* only when it supports the tile state, as fastrnn's XCR0 check requires
    assert FEATURES["amx_bf16"] == ("amx_bf16" in flags and "amx_tile" in flags)


def test_the_active_path_follows_the_isa():
    before = fastrnn.get_isa()
    try:
        fastrnn.set_isa("scalar")
        assert _C._bf16_path() == "portable"
        if NATIVE:
            fastrnn.set_isa("avx512")
            assert _C._bf16_path() == "avx512_bf16"
    finally:
        fastrnn.set_isa(before)


def test_info_reports_the_features(capsys):
    from fastrnn.__main__ import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("precision features:"))
    for name, on in FEATURES.items():
        assert (name in line.split("(")[0]) == on, line
    assert ("bf16 kernels: native" in out) == (_C._bf16_path() != "portable")


def test_bad_paths_are_refused():
    with pytest.raises(ValueError, match="expected active, portable"):
        _C._bf16_round(np.ones(3, np.float32), "avx9")
    if not NATIVE and "avx512" in fastrnn.available_isas():
        with pytest.raises(ValueError, match="does not have it"):
            _C._bf16_round(np.ones(3, np.float32), "avx512_bf16")


# --- rounding --------------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 1.17549435e-38,
                    3.4028235e38, -3.4028235e38, 3.3961775e38, 1.00390625, 1.01171875, 1.0078125, 65504.0,
                    np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal], np.float32)


def bit_samples(step):
    """Every `step`-th float32 bit pattern, plus the ties and their neighbours around each."""
    base = np.arange(0, 2**32, step, dtype=np.uint64)
    ties = (base & ~np.uint64(0xFFFF)) | np.uint64(0x8000)
    pats = np.concatenate([base, ties, ties - np.uint64(1), ties + np.uint64(1)]) & np.uint64(0xFFFFFFFF)
    return pats.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("path", PATHS)
def test_round_matches_the_model(path):
    x = np.concatenate([SPECIAL, bit_samples(65537)])
    got = _C._bf16_round(x, path)
    assert got.dtype == np.uint16 and got.shape == x.shape
    want = round_model(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(to_f32(got[nan])).all()
    np.testing.assert_array_equal(got[nan], want[nan])  # quiet, sign and top payload kept


@needs_native
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 1000])
def test_round_native_equals_portable_bitwise(n):
    x = bit_samples(4099)[: n * 1000].reshape(-1)[:n * 997]
    np.testing.assert_array_equal(_C._bf16_round(x, "avx512_bf16"), _C._bf16_round(x, "portable"))


def test_round_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 1e3
    mine = to_f32(_C._bf16_round(x, "portable"))
    theirs = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(mine, theirs)  # normal values: both round to nearest even


# --- GEMM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("N,rows,depth", [(1, 16, 2), (1, 1, 1), (3, 17, 7), (6, 64, 32), (7, 65, 33),
                                          (13, 100, 64), (16, 48, 128)])
def test_gemm_matches_the_model_and_the_float64_product(path, N, rows, depth):
    r = np.random.default_rng(N * 1000 + rows + depth)
    a = r.standard_normal((N, depth)).astype(np.float32)
    w = r.standard_normal((rows, depth)).astype(np.float32)
    c, a16 = gemm(a, w, path)
    w16 = round_model(w)
    if depth % 2:
        w16 = np.pad(w16, ((0, 0), (0, 1)))
    np.testing.assert_array_equal(c, gemm_model(a16, w16))
    # and near the exact product of the rounded operands: float32 accumulation over depth terms
    exact = to_f32(a16).astype(np.float64) @ to_f32(w16).astype(np.float64).T
    bound = depth * 2.0**-24 * (np.abs(to_f32(a16)).astype(np.float64) @ np.abs(to_f32(w16)).astype(np.float64).T)
    assert (np.abs(c - exact) <= bound + 1e-30).all()
    # the rounding of the operands is what bf16 costs against float32: relative 2^-8 each
    f32 = a.astype(np.float64) @ w.astype(np.float64).T
    scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64).T
    assert (np.abs(c - f32) <= 2 * 2.0**-8 * scale + bound).all()


@pytest.mark.parametrize("path", PATHS)
def test_gemm_accumulates(path):
    r = np.random.default_rng(5)
    a = r.standard_normal((5, 20)).astype(np.float32)
    w = r.standard_normal((40, 20)).astype(np.float32)
    c0 = r.standard_normal((5, 40)).astype(np.float32)
    c, a16 = gemm(a, w, path, c0)
    np.testing.assert_array_equal(c, gemm_model(a16, round_model(w), c0))


@needs_native
@pytest.mark.parametrize("N", [1, 2, 5, 6, 7, 12, 13])
@pytest.mark.parametrize("rows", [16, 48, 64, 80, 130])
def test_gemm_native_equals_portable_bitwise(N, rows):
    """Random data, then data that reaches every edge of the model: denormals (DAZ), products and
    sums below float32's normal range (FTZ), overflow to infinity, infinities, NaN, signed zeros."""
    r = np.random.default_rng(N * 7 + rows)
    depth = 24
    for scale in ("normal", "edges", "tiny"):
        if scale == "tiny":  # products and sums around float32's smallest normal, 2^-126
            a = (r.standard_normal((N, depth)) * 2.0**-63).astype(np.float32)
            w = (r.standard_normal((rows, depth)) * 2.0**-63).astype(np.float32)
            c0 = (r.standard_normal((N, rows)) * 2.0**-126).astype(np.float32)
        elif scale == "normal":
            a = r.standard_normal((N, depth)).astype(np.float32)
            w = r.standard_normal((rows, depth)).astype(np.float32)
            c0 = r.standard_normal((N, rows)).astype(np.float32)
        else:
            def wide(shape):  # normal draws times 2^-140 .. 2^127: denormals to overflows
                return (r.standard_normal(shape) * 2.0 ** r.integers(-140, 128, shape)).clip(-3e38, 3e38).astype(np.float32)
            a, w, c0 = wide((N, depth)), wide((rows, depth)), wide((N, rows))
            a.flat[r.integers(0, a.size, 3)] = [np.inf, -0.0, 1e-41]
            w.flat[r.integers(0, w.size, 3)] = [-np.inf, np.nan, -1e-42]
        for acc in (None, c0):
            with np.errstate(over="ignore", invalid="ignore"):
                nat, _ = gemm(a, w, "avx512_bf16", acc)
                por, _ = gemm(a, w, "portable", acc)
            nan = np.isnan(nat)
            np.testing.assert_array_equal(nan, np.isnan(por))
            if is_intel():  # the model is Intel's documented order; other vendors: see the docs
                np.testing.assert_array_equal(nat.view(np.uint32)[~nan], por.view(np.uint32)[~nan])
            elif scale == "normal":
                np.testing.assert_allclose(nat, por, rtol=1e-5, atol=1e-5)


def test_gemm_checks_its_arguments():
    packed = _C._bf16_pack(np.ones((16, 4), np.float32))
    with pytest.raises(ValueError, match="depth even"):
        _C._bf16_gemm(np.ones((2, 3), np.uint16), packed, np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="expected"):
        _C._bf16_gemm(np.ones((2, 4), np.uint16), packed, np.zeros((3, 16), np.float32))
