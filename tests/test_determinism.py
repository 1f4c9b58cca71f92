"""Determinism: bitwise-identical results run to run for a fixed thread count and ISA; results of
fastrnn's own kernels independent of its thread count; the (documented) size of the differences
between ISAs and of OpenBLAS's thread-count dependence."""
import ctypes
import os

import numpy as np
import pytest
import scipy_openblas32

import fastrnn

from util import CELLS, make_layer

DTYPES = [np.float32, np.float64]


def _openblas():
    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True)))
    return lib.scipy_openblas_set_num_threads


@pytest.fixture
def threads():
    """set(n_fastrnn, n_blas=None): fastrnn.set_num_threads sets both; OpenBLAS can be pinned after.
    The pool's back-off (one thread for a while after slow barriers, e.g. 4 threads on 2 busy
    cores) is off, so the threads a step runs on are the planner's choice alone."""
    previous = fastrnn.get_num_threads()
    backoff = fastrnn._C._set_thread_backoff(False)
    set_blas = _openblas()

    def set_threads(n, blas=None):
        fastrnn.set_num_threads(n)
        if blas is not None:
            set_blas(blas)

    yield set_threads
    fastrnn._C._set_thread_backoff(backoff)
    fastrnn.set_num_threads(previous)


def _run(cell, dtype, training, seed=0, T=20, N=16, C=12, H=128, D=2, regions=None):
    """Everything one call computes: outputs, states and (training) every gradient. N = 16 and
    H = 128 give a step of every cell enough work (RNN: 5.2e5 flop) that the planner splits a
    direction's units among up to 4 threads. `regions`: a list that receives the parallel regions
    the call ran (what, threads asked, threads that ran, on what)."""
    layer = make_layer(cell, C, H, dtype=dtype, seed=seed, num_layers=2, bidirectional=D == 2,
                       dropout=0.25 if training else 0.0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    lengths = rng.integers(1, T + 1, N)
    layer.train(training)
    fastrnn._C._record_regions(True)
    out, state = layer(x, lengths=lengths)
    res = {"out": out}
    res.update({f"state{i}": s for i, s in enumerate(state if isinstance(state, tuple) else (state,))})
    if training:
        back = layer.backward(np.cos(out), *(np.sin(s) for s in (state if isinstance(state, tuple) else (state,))))
        res.update({f"grad{i}": g for i, g in enumerate(back)})
        res.update({f"grads[{k}]": v for k, v in layer.grads.items()})
    recorded = fastrnn._C._record_regions(False)
    if regions is not None:
        regions.extend(recorded)
    return res


def _ran(regions, what):
    """{(threads asked, threads that ran, on what)} of the `what` regions."""
    return {(asked, ran, on) for w, asked, ran, on in regions if w == what}


def _assert_bitwise(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), f"{what}: {k} differs (max |diff| {np.max(np.abs(a[k] - b[k])):.3g})"


def _scaled_diff(a, b):
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k])) / max(1.0, float(np.max(np.abs(b[k])))))
               for k in a)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_run_to_run_bitwise(isa, threads, cell, dtype, training):
    threads(2)
    first = _run(cell, dtype, training)
    for _ in range(2):
        _assert_bitwise(_run(cell, dtype, training), first, f"{isa} run to run")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_kernels_independent_of_thread_count(isa, threads, cell, dtype):
    """Each element is computed by one thread with the same arithmetic whatever the partition
    (threads own whole unit blocks; reductions run in a fixed order), so the results are bitwise
    equal for 1..4 fastrnn threads. The recorded regions show that the work was split: one
    direction over n threads, or two directions over n // 2 each. T = 4 keeps every OpenBLAS GEMM
    under the 2e7-flop line where fastrnn splits it by rows (2·T·N·4H·2H = 1.7e7 for the LSTM),
    and the regions show none was split: a split GEMM may round differently (OpenBLAS's Haswell
    kernels, used on Zen 3, round a row differently with the call's row count; the next test)."""
    for D in (1, 2):
        threads(1, blas=1)
        want = _run(cell, dtype, training=True, T=4, D=D)
        for n in (2, 3, 4):
            threads(n, blas=1)
            regions = []
            _assert_bitwise(_run(cell, dtype, training=True, T=4, D=D, regions=regions), want,
                            f"{isa}, D={D}, {n} threads vs 1")
            planned = n if D == 1 else 2 * (n // 2)
            assert _ran(regions, "recurrence") == {(planned, planned, "pool")}, f"D={D}, {n} threads: {regions}"
            assert _ran(regions, "gemm") == set(), f"D={D}, {n} threads: a GEMM was split: {regions}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_blas_thread_count_changes_at_most_rounding(threads, cell, dtype):
    """The hoisted GEMMs run on OpenBLAS: one thread below 2e7 flop; above, split by output rows
    over fastrnn's threads, each part a one-thread OpenBLAS call. The split may change rounding,
    never more. T = 100 takes the second layer's input projection, dW_ih and dx (2·T·N·G·H·D·H
    ≥ 1.05e8 flop) well over the threshold for every cell; the regions show they were split."""
    threads(1)
    want = _run(cell, dtype, training=True, T=100)
    for n in (2, 4):
        threads(n)
        regions = []
        got = _run(cell, dtype, training=True, T=100, regions=regions)
        assert (n, n, "pool") in _ran(regions, "gemm"), regions
        assert _scaled_diff(got, want) <= {np.float32: 1e-6, np.float64: 1e-13}[dtype]


# Measured on this machine (2026-11; max over every output and gradient of this problem, scaled
# as |a - b| / max(1, max|b|)): avx2 and avx512 vs scalar, float32 <= 4.4e-7, float64 <= 6.7e-16;
# avx512 vs avx2 bitwise equal. The float32 gap comes from the vectorised exp/tanh/sigmoid (scalar
# uses libm) and FMA in the recurrent GEMM; float64 differs by FMA only (its cells use libm).
ISA_BOUND = {np.float32: 2e-6, np.float64: 5e-15}


@pytest.mark.skipif(len(fastrnn.available_isas()) < 2, reason="one ISA on this machine")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_isa_differences_are_rounding_level(threads, cell, dtype):
    threads(2)
    previous = fastrnn.get_isa()
    try:
        fastrnn.set_isa("scalar")
        want = _run(cell, dtype, training=True)
        for isa in fastrnn.available_isas():
            fastrnn.set_isa(isa)
            diff = _scaled_diff(_run(cell, dtype, training=True), want)
            assert diff <= ISA_BOUND[dtype], f"{isa} vs scalar: {diff:.3g}"
    finally:
        fastrnn.set_isa(previous)


# Inference of a one-direction stack with small recurrent weights splits the batch's rows over
# the threads, each running the whole stack on its own rows without a barrier (csrc/core/driver.cpp,
# batch_split_threads). With the input products on fastrnn's microkernel (forced here, so that
# the test means the same on every CPU) a row is computed with the same arithmetic whatever rows
# are beside it: bitwise the one-thread result.
BATCH_SPLIT_LAYERS = {
    "lstm": lambda dt: fastrnn.LSTM(7, 24, num_layers=2, dtype=dt, rng=0),
    "gru": lambda dt: fastrnn.GRU(7, 24, num_layers=2, dtype=dt, rng=0),
    "gru_v1": lambda dt: fastrnn.GRU(7, 24, reset_after=False, dtype=dt, rng=0),
    "rnn_tanh": lambda dt: fastrnn.RNN(7, 24, dtype=dt, rng=0),
    "rnn_relu": lambda dt: fastrnn.RNN(7, 24, nonlinearity="relu", dtype=dt, rng=0),
    "lstmp": lambda dt: fastrnn.LSTM(7, 24, proj_size=9, dtype=dt, rng=0),
    "lstmp_peephole": lambda dt: fastrnn.LSTM(7, 24, proj_size=9, peephole=True, dtype=dt, rng=0),
    "layernorm_lstm": lambda dt: fastrnn.LayerNormLSTM(7, 24, dtype=dt, rng=0),
    "layernorm_gru": lambda dt: fastrnn.LayerNormGRU(7, 24, dtype=dt, rng=0),
    "ligru": lambda dt: fastrnn.LiGRU(7, 24, num_layers=2, dtype=dt, rng=0),
    "sligru": lambda dt: fastrnn.SLiGRU(7, 24, dtype=dt, rng=0),
}


def _infer(layer, x, regions=None, **kw):
    fastrnn._C._record_regions(True)
    out, state = layer(x, **kw)
    recorded = fastrnn._C._record_regions(False)
    if regions is not None:
        regions.extend(recorded)
    return {"out": out, **{f"state{i}": s for i, s in enumerate(state if isinstance(state, tuple) else (state,))}}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(BATCH_SPLIT_LAYERS))
def test_inference_split_by_batch_rows_is_bitwise_one_thread(isa, threads, input_gemm, name, dtype):
    fastrnn._C._set_input_gemm("own")
    layer = BATCH_SPLIT_LAYERS[name](dtype).eval()
    rng = np.random.default_rng(1)
    T, N = 1500, 13  # parts of 4 to 7 rows (1500 x 4: the microkernel's input products)
    x = rng.standard_normal((T, N, 7)).astype(dtype)
    hx = rng.standard_normal((layer.num_layers, N, layer.proj_size or 24)).astype(dtype)
    hx = (hx, rng.standard_normal((layer.num_layers, N, 24)).astype(dtype)) if isinstance(layer, fastrnn.LSTM) else hx
    kw = dict(hx=hx, lengths=rng.integers(1, T + 1, N))
    threads(1)
    want = _infer(layer, x, **kw)
    for n in (2, 3):
        threads(n)
        regions = []
        _assert_bitwise(_infer(layer, x, regions, **kw), want, f"{isa} {name}, {n} threads vs 1")
        assert _ran(regions, "batch") == {(n, n, "pool")}, regions
        assert _ran(regions, "recurrence") == {(1, 1, "caller")}, regions


@pytest.mark.parametrize("threads_used", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("variant", [{}, {"peephole": True}, {"zoneout_h": 0.3, "zoneout_c": 0.2}, {"proj_size": 9}],
                         ids=["lstm", "peephole", "zoneout", "lstmp"])
def test_rows_independent_of_the_batch_around_them(isa, threads, input_gemm, variant, dtype, threads_used):
    """A row's result is the same bits whatever the batch beside it, on fastrnn's own kernels:
    the register blocks of rows, and the forward step's unit group (AVX2 float32 LSTM: two unit
    blocks per tile at N <= 32, one above), change the speed only. H = 80: five unit blocks, so
    a group of two ends with a group of one (and 2 threads split them 2 + 3)."""
    fastrnn._C._set_input_gemm("own")  # T*N >= 2048 rows below: the microkernel, not BLAS
    threads(threads_used)
    layer = fastrnn.LSTM(9, 80, dtype=dtype, rng=0, **variant).eval()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 40, 9)).astype(dtype)
    K = variant.get("proj_size", 80)
    h0, c0 = rng.standard_normal((1, 40, K)).astype(dtype), rng.standard_normal((1, 40, 80)).astype(dtype)
    wide = _infer(layer, x, hx=(h0, c0))  # N = 40
    part = _infer(layer, x[:, :32], hx=(h0[:, :32], c0[:, :32]))  # N = 32
    _assert_bitwise(part, {k: np.ascontiguousarray(v[..., :32, :]) for k, v in wide.items()},
                    f"{isa}: rows 0-31 of N = 40 against N = 32")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_inference_split_by_batch_rows_on_blas_is_within_rounding(threads, input_gemm, dtype):
    """On OpenBLAS the parts' input products have fewer rows, which may round differently (its
    Haswell kernels do): the split stays within the split-GEMM bound of the test above."""
    fastrnn._C._set_input_gemm("blas")
    layer = fastrnn.LSTM(16, 32, num_layers=2, dtype=dtype, rng=0).eval()
    x = np.random.default_rng(2).standard_normal((200, 8, 16)).astype(dtype)
    threads(1)
    want = _infer(layer, x)
    threads(2)
    regions = []
    got = _infer(layer, x, regions)
    assert _ran(regions, "batch") == {(2, 2, "pool")}, regions
    assert _scaled_diff(got, want) <= {np.float32: 1e-6, np.float64: 1e-13}[dtype]


@pytest.mark.parametrize("case", ["control", "training", "bidirectional", "few rows", "large weights", "large steps",
                                  "short", "zoneout", "stream", "three threads"])
def test_batch_split_only_where_it_applies(threads, case):
    """Training (the weight gradients sum over rows), two directions (one per thread already),
    fewer than 4 rows per thread, recurrent weights over 512 KiB (float64: in float32 the step's
    share rules such weights out first), steps whose share per thread
    dwarfs a barrier, calls too short to pay for waking a thread, and inference zoneout keep the
    split by units, and so do streams (the split allocates per call). The control splits, and so
    does a long call at 3 threads whose 8 rows take 2 (its units' split would take 3 at the long
    calls' lower bar, but its steps are small: 2.6e5 flops)."""
    T, N, H, kw = 200, 8, 32, {}
    if case == "bidirectional":
        kw = dict(bidirectional=True)
    elif case == "few rows":
        N = 7
    elif case == "large weights":
        H, T = 160, 20  # 4 x 160 x 160 float64 = 819 KB; 2 x 8 x 640 x 160 / 2 = 8.2e5 flops a thread
    elif case == "large steps":
        N, H, T = 64, 64, 20  # 2 x 64 x 256 x 64 / 2 = 1.05e6 flops of a step per thread
    elif case == "short":
        T = 2
    elif case == "zoneout":
        kw = dict(zoneout_h=0.1)
    elif case == "three threads":
        T, H = 1000, 64
    dtype = np.float64 if case == "large weights" else np.float32
    layer = fastrnn.LSTM(8, H, dtype=dtype, rng=0, **kw).train(case == "training")
    x = np.random.default_rng(0).standard_normal((T, N, 8)).astype(dtype)
    threads(3 if case == "three threads" else 2)
    regions = []
    if case == "stream":  # a chunk of the control's size
        stream = layer.stream(batch=N)
        fastrnn._C._record_regions(True)
        stream.step(x)
        regions = fastrnn._C._record_regions(False)
    else:
        _infer(layer, x, regions)
    assert _ran(regions, "batch") == ({(2, 2, "pool")} if case in ("control", "three threads") else set()), regions
