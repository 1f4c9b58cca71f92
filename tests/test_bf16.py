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
ISAS = fastrnn.available_isas()
# every path this CPU can run: vdpbf16ps, float32 FMAs on widened bf16 (AVX-512F, AVX2), portable
NATIVE_PATHS = ((["avx512_bf16"] if NATIVE else []) + (["avx512_fma"] if "avx512" in ISAS else [])
                + (["avx2_fma"] if "avx2" in ISAS else []))
PATHS = ["portable"] + NATIVE_PATHS


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


def assert_model(got, want, path):
    """Bitwise, but for vdpbf16ps on a non-Intel CPU: the model is the order Intel documents (and
    that was measured on an Intel Xeon); other vendors' order was not measured."""
    if path == "avx512_bf16" and not is_intel():
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


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
    # the tile state must also be enabled by the OS (XCR0), which kernels before 5.16 do not do
    # while they may list the CPU's flags: the feature implies the flags
    assert not FEATURES["amx_bf16"] or ("amx_bf16" in flags and "amx_tile" in flags)


def test_the_active_path_follows_the_isa():
    before = fastrnn.get_isa()
    try:
        fastrnn.set_isa("scalar")
        assert _C._bf16_path() == "portable"
        if "avx2" in ISAS:
            fastrnn.set_isa("avx2")
            assert _C._bf16_path() == "avx2_fma"
        if "avx512" in ISAS:
            fastrnn.set_isa("avx512")
            assert _C._bf16_path() == ("avx512_bf16" if NATIVE and not is_intel() else "avx512_fma")
    finally:
        fastrnn.set_isa(before)


def test_info_reports_the_features(capsys):
    from fastrnn.__main__ import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("precision features:"))
    for name, on in FEATURES.items():
        assert (name in line.split("(")[0]) == on, line
    assert f"bf16 kernels: {_C._bf16_path()} (" in out


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
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 1000, 1_000_000])
def test_round_native_equals_portable_bitwise(n):
    x = bit_samples(4099)[:n]
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
    assert_model(c, gemm_model(a16, w16), path)
    # and near the exact product of the rounded operands: float32 accumulation over depth terms
    exact = to_f32(a16).astype(np.float64) @ to_f32(w16).astype(np.float64).T
    bound = depth * 2.0**-24 * (np.abs(to_f32(a16)).astype(np.float64) @ np.abs(to_f32(w16)).astype(np.float64).T)
    assert (np.abs(c - exact) <= bound + 1e-30).all()
    # the rounding of the operands is what bf16 costs against float32: relative 2^-8 each
    f32 = a.astype(np.float64) @ w.astype(np.float64).T
    scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64).T
    assert (np.abs(c - f32) <= 2 * 2.0**-8 * scale + bound).all()


def bf(x):
    return int(round_model(np.float32(x)))


# (c0, a pair [even, odd] as bf16 bits, w pair [even, odd], expected): each pins one rule of the model
EDGES = [
    # the flush boundary: 2^-126 - 2^-151 ties between 2^-126 - 2^-150 (odd) and 2^-126 (even): kept
    (2.0**-126, [0, bf(-(2.0**-75))], [0.0, 2.0**-76], 2.0**-126),
    # just below that tie the sum rounds to 2^-126 - 2^-150, below the smallest normal: flushed
    (2.0**-126, [0, bf(-1.5 * 2.0**-75)], [0.0, 2.0**-76], 0.0),
    # a denormal accumulator counts as zero (DAZ): 2^-127 + 2^-127 gives 2^-127 -> flushed, not 2^-126
    (2.0**-127, [0, bf(2.0**-63)], [0.0, 2.0**-64], 0.0),
    # a denormal bf16 input counts as zero
    (0.0, [0, 0x0001], [0.0, 2.0**127], 0.0),
    # the odd element first: (1 + 2^24) + 1 rounds to 2^24 (even first: 1 + 1 + 2^24 = 2^24 + 2)
    (1.0, [bf(1.0), bf(2.0**24)], [1.0, 1.0], 2.0**24),
    # products are exact beyond float32's range; the first sum overflows to inf and stays there
    (0.0, [bf(-(2.0**100)), bf(2.0**100)], [2.0**100, 2.0**100], np.inf),
    # -0 + (+0) is +0
    (-0.0, [0, 0], [1.0, 1.0], 0.0),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", range(len(EDGES)))
def test_gemm_edges_of_the_model(path, case):
    c0, a_bits, w_pair, want = EDGES[case]
    got = edge_product(c0, a_bits, w_pair, path)
    if path == "avx512_bf16" and not is_intel():
        pytest.skip("vdpbf16ps's edge behaviour was measured on Intel only")
    assert got.view(np.uint32) == np.float32(want).view(np.uint32), (got, want)


def edge_product(c0, a_bits, w_pair, path):
    """c0 + one pair's products through the GEMM of `path` (the first output of a panel)."""
    a16 = np.array([a_bits], np.uint16)
    w = np.zeros((16, 2), np.float32)
    w[0] = w_pair
    with np.errstate(over="ignore"):
        c = np.zeros((1, 16), np.float32)
        c[0, 0] = c0
        _C._bf16_gemm(a16, _C._bf16_pack(w), c, True, path)
    return c[0, 0]


@pytest.mark.parametrize("path", PATHS)
def test_gemm_accumulates(path):
    r = np.random.default_rng(5)
    a = r.standard_normal((5, 20)).astype(np.float32)
    w = r.standard_normal((40, 20)).astype(np.float32)
    c0 = r.standard_normal((5, 40)).astype(np.float32)
    c, a16 = gemm(a, w, path, c0)
    assert_model(c, gemm_model(a16, round_model(w), c0), path)


@pytest.mark.skipif(not NATIVE_PATHS, reason="needs AVX2, AVX-512 or AVX512-BF16")
@pytest.mark.parametrize("path", NATIVE_PATHS or ["none"])
@pytest.mark.parametrize("N", [1, 2, 5, 6, 7, 12, 13])
@pytest.mark.parametrize("rows", [16, 48, 64, 80, 130])
def test_gemm_native_equals_portable_bitwise(path, N, rows):
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
                nat, _ = gemm(a, w, path, acc)
                por, _ = gemm(a, w, "portable", acc)
            nan = np.isnan(nat)
            np.testing.assert_array_equal(nan, np.isnan(por))
            # the model is Intel's documented vdpbf16ps; the FMA paths follow IEEE FMA, so on normal
            # data they match it on any CPU; other vendors' vdpbf16ps and FTZ: see the docs
            if is_intel() or (path != "avx512_bf16" and scale == "normal"):
                np.testing.assert_array_equal(nat.view(np.uint32)[~nan], por.view(np.uint32)[~nan])
            elif scale == "normal":
                np.testing.assert_allclose(nat, por, rtol=1e-5, atol=1e-5)


@needs_native
def test_the_model_is_this_cpus(tmp_path):
    """bench/bf16_hardware_model.c compares the model (and the FMA path's trick) with the CPU's own
    vcvtneps2bf16 and vdpbf16ps; --quick: every 257th bit pattern and 320,000 pairs."""
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("needs a C compiler")
    source = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bf16_hardware_model.c")
    exe = str(tmp_path / "bf16_model")
    subprocess.run([cc, "-O2", "-o", exe, source, "-lm"], check=True, capture_output=True)
    run = subprocess.run([exe, "--quick"], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and not is_intel():  # measured on Intel only (docs/design.md)
        pytest.skip(f"this CPU's vdpbf16ps differs from the model of Intel's: {run.stdout}")
    assert run.returncode == 0, run.stdout
    assert "0 mismatches with the model, 0 with FMAs" in run.stdout, run.stdout


@pytest.mark.parametrize("path", PATHS + ["amx_model"])
@pytest.mark.parametrize("N,rows,depth", [(1, 5, 8), (2, 17, 12), (7, 33, 20), (9, 100, 36), (18, 40, 66)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_writes_only_the_columns_asked_for(path, N, rows, depth, accumulate):
    # c [N, rows] with rows not a multiple of 16: the last panel's outputs past `rows` would land
    # in the next row of c (row stride = rows), and after the last row in the guard
    r = np.random.default_rng(rows + depth)
    a = r.standard_normal((N, depth)).astype(np.float32)
    w = r.standard_normal((rows, depth)).astype(np.float32)
    c0 = r.standard_normal((N, rows)).astype(np.float32)
    want, a16 = gemm(a, w, path, c0 if accumulate else None)
    buf = np.full(N * rows + 64, 7.0, np.float32)
    c = buf[:N * rows].reshape(N, rows)
    c[...] = c0 if accumulate else -1.0
    _C._bf16_gemm(a16, _C._bf16_pack(w), c, accumulate, path)
    np.testing.assert_array_equal(c, want)
    assert (buf[N * rows:] == 7.0).all()


def test_gemm_output_must_be_the_callers_array():
    """c is written in place: an array that would need converting is refused, not copied (the
    copy would take the result)."""
    packed = _C._bf16_pack(np.ones((16, 4), np.float32))
    a = np.ones((2, 4), np.uint16)
    for c in (np.zeros((2, 16), np.float64), np.zeros((2, 32), np.float32)[:, ::2]):
        with pytest.raises(TypeError):
            _C._bf16_gemm(a, packed, c)


def test_gemm_checks_its_arguments():
    packed = _C._bf16_pack(np.ones((16, 4), np.float32))
    with pytest.raises(ValueError, match="depth even"):
        _C._bf16_gemm(np.ones((2, 3), np.uint16), packed, np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="expected"):
        _C._bf16_gemm(np.ones((2, 4), np.uint16), packed, np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match="panels = ceil"):
        _C._bf16_gemm(np.ones((2, 4), np.uint16), packed, np.zeros((2, 17), np.float32))


# --- AMX (csrc/kernels/bf16_amx.h): the tile GEMM, on the model of the tiles -----------------

def gemm_model_even_first(a16, w16, c0=None):
    """TDPBF16PS as the SDM's pseudo-code has it: per pair the even element's product first."""
    a = to_f32(a16).astype(np.float64)
    w = to_f32(w16).astype(np.float64)
    acc = np.zeros((a.shape[0], w.shape[0]), np.float32) if c0 is None else c0.copy()
    for q in range(a.shape[1] // 2):
        for e in (0, 1):
            acc = (acc.astype(np.float64) + np.outer(a[:, 2 * q + e], w[:, 2 * q + e])).astype(np.float32)
    return acc


@pytest.mark.parametrize("N", [1, 15, 16, 17, 33])
@pytest.mark.parametrize("rows", [1, 16, 17, 40])
@pytest.mark.parametrize("depth", [2, 7, 32, 34, 64, 100])
@pytest.mark.parametrize("accumulate", [False, True])
def test_amx_tiles_give_the_sdm_order(N, rows, depth, accumulate):
    # row blocks of 16 and their tail, pairs in chunks of 16 and their tail, two panels per A tile
    # and a partial last panel: bitwise the even-first model, and float32 roundings from portable
    r = np.random.default_rng(N * 10000 + rows * 100 + depth)
    a = r.standard_normal((N, depth)).astype(np.float32)
    w = r.standard_normal((rows, depth)).astype(np.float32)
    c0 = r.standard_normal((N, rows)).astype(np.float32) if accumulate else None
    c, a16 = gemm(a, w, "amx_model", c0)
    w16 = round_model(w)
    if depth % 2:
        w16 = np.pad(w16, ((0, 0), (0, 1)))
    np.testing.assert_array_equal(c, gemm_model_even_first(a16, w16, c0))
    np.testing.assert_allclose(c, gemm(a, w, "portable", c0)[0], rtol=1e-5, atol=1e-5 * np.sqrt(depth))


def test_amx_edges_and_the_pair_order():
    for c0, a_bits, w_pair, want in EDGES:
        if a_bits[1] == bf(2.0**24):  # the pair order: even first gives 1 + 1 + 2^24 = 2^24 + 2
            want = 2.0**24 + 2
        if want == np.inf:  # even first: -2^200 overflows to -inf first, and stays there
            want = -np.inf
        got = edge_product(c0, a_bits, w_pair, "amx_model")
        assert got.view(np.uint32) == np.float32(want).view(np.uint32), (c0, a_bits, w_pair, got, want)


def test_layers_on_the_amx_tiles_model():
    # the plans' bf16 products through the tile GEMM (use_amx_model): inference and training agree
    # with the active path to float32 roundings of the sums
    layer = fastrnn.LSTM(20, 37, num_layers=2, bidirectional=True, rng=0, compute_dtype="bfloat16")
    x = np.random.default_rng(1).standard_normal((6, 19, 20)).astype(np.float32)

    def run():
        layer.zero_grad()
        out = layer(x)[0]
        return out, layer.backward(np.ones_like(out))[0], layer.grads["weight_hh_l0"].copy()
    want = run()
    _C._use_amx_model(True)
    try:
        assert _C._bf16_path() == "amx_model"
        got = run()
    finally:
        _C._use_amx_model(False)
    assert _C._bf16_path() != "amx_model"
    assert not np.array_equal(got[0], want[0])  # the forward's products ran on the tiles
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * np.abs(w).max())


def test_enable_amx_says_why_not():
    if FEATURES["amx_bf16"]:
        pytest.skip("an AMX CPU: test_amx_native_matches_the_model covers it")
    with pytest.warns(RuntimeWarning, match="no AMX-BF16 tiles"):
        assert fastrnn.enable_amx() is False
    assert _C._bf16_path() != "amx_bf16" and fastrnn.enable_amx(False) is False


@pytest.mark.skipif(not FEATURES["amx_bf16"], reason="needs a CPU (and OS) with AMX-BF16")
def test_amx_native_matches_the_model():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not fastrnn.enable_amx():
            pytest.skip("Linux refused the tile state here (see enable_amx's warning)")
    try:
        r = np.random.default_rng(3)
        for N, rows, depth in [(1, 16, 32), (17, 40, 34), (33, 100, 100)]:
            a = r.standard_normal((N, depth)).astype(np.float32)
            w = r.standard_normal((rows, depth)).astype(np.float32)
            got, _ = gemm(a, w, "amx_bf16")
            # the model's pair order is the SDM's; the hardware's was never measured: to roundings
            np.testing.assert_allclose(got, gemm(a, w, "amx_model")[0], rtol=1e-5, atol=1e-5 * np.sqrt(depth))
    finally:
        fastrnn.enable_amx(False)
