"""Streaming inference (layer.stream, fastrnn.torch's module.stream, fastrnn_stream_* of the C ABI):
one step or a chunk per call gives what one call over the whole sequence gives, on every ISA, cell
and variant, both dtypes, the in-place path (few slots) and the packed one (many); resets, active
slots, weight updates, state access, threads, and every refusal."""
import copy
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn.core.stream import Stream

# Tolerance on max|stream - call| / max|call|: a call hoists W_ih x into one GEMM and packs W_hh,
# a stream of a few slots takes per-step products from the weights in place: the sums run in
# other orders. LayerNorm divides by the rows' spread, which magnifies those roundings a few times.
TOL = {np.float32: 1e-6, np.float64: 1e-12}
LN_FACTOR = 10

VARIANTS = {
    "lstm": (fastrnn.LSTM, {}),
    "gru": (fastrnn.GRU, {}),
    "gru_reset_before": (fastrnn.GRU, {"reset_after": False}),
    "rnn_tanh": (fastrnn.RNN, {}),
    "rnn_relu": (fastrnn.RNN, {"nonlinearity": "relu"}),
    "lstm_proj": (fastrnn.LSTM, {"proj_size": 5}),
    "lstm_peephole": (fastrnn.LSTM, {"peephole": True}),
    "lstm_proj_peephole": (fastrnn.LSTM, {"proj_size": 5, "peephole": True}),
    "lstm_zoneout": (fastrnn.LSTM, {"zoneout_h": 0.2, "zoneout_c": 0.1}),
    "gru_zoneout": (fastrnn.GRU, {"zoneout_h": 0.3}),
    "layernorm_lstm": (fastrnn.LayerNormLSTM, {}),
    "layernorm_gru": (fastrnn.LayerNormGRU, {}),
    "ligru": (fastrnn.LiGRU, {}),
    "ligru_layernorm_tanh": (fastrnn.LiGRU, {"normalization": "layernorm", "nonlinearity": "tanh"}),
    "ligru_no_norm": (fastrnn.LiGRU, {"normalization": None}),
    "sligru": (fastrnn.SLiGRU, {}),
}


def make(name, C=7, H=19, L=2, dtype=np.float32, **kw):
    cls, opts = VARIANTS[name]
    layer = cls(C, H, num_layers=L, dtype=dtype, rng=0, **{**opts, **kw})
    if layer.buffers:  # Li-GRU batch norm: running statistics that are not the initial ones
        g = np.random.default_rng(1)
        for k, b in layer.buffers.items():
            b[...] = g.uniform(0.5, 1.5, b.shape) if "var" in k else g.normal(0, 0.3, b.shape)
    return layer.eval()


def rel_err(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def tol(name, dtype):
    return TOL[dtype] * (LN_FACTOR if "layernorm" in name or "sligru" in name else 1)


@pytest.mark.parametrize("isa", fastrnn.available_isas())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 3, 12])  # 12 > 8 slots: the packed copy
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_steps_equal_one_call(name, N, dtype, isa):
    before = fastrnn.get_isa()
    fastrnn.set_isa(isa)
    try:
        layer = make(name, dtype=dtype)
        x = np.random.default_rng(2).standard_normal((11, N, 7)).astype(dtype)
        want, hx = layer(x)
        s = layer.stream(batch=N)
        assert s._core.in_place == (N <= 8)
        got = np.stack([s.step(x[t]) for t in range(x.shape[0])])
        assert rel_err(got, want) < tol(name, dtype), name
        for a, b in zip(s.state if isinstance(s.state, tuple) else (s.state,),
                        hx if isinstance(hx, tuple) else (hx,)):
            assert rel_err(a, b) < tol(name, dtype)
        # chunks of several steps, then single steps, carry the state the same way
        s.reset()
        got = np.concatenate([s.step(x[0:4]), s.step(x[4:5]), s.step(x[5:11])])
        assert rel_err(got, want) < tol(name, dtype)
    finally:
        fastrnn.set_isa(before)


@pytest.mark.parametrize("H", [1, 15, 16, 17, 33, 64])  # around the SIMD widths and the 8-row blocks
@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_sizes_around_simd_widths(H, N):
    layer = make("lstm", C=H + 2, H=H, L=1)
    x = np.random.default_rng(H).standard_normal((4, N, H + 2)).astype(np.float32)
    want, _ = layer(x)
    s = layer.stream(N)
    assert rel_err(np.stack([s.step(x[t]) for t in range(4)]), want) < 1e-6


def test_single_layer_single_slot_t1():
    layer = make("gru", L=1)
    x = np.random.default_rng(0).standard_normal((1, 1, 7)).astype(np.float32)
    want, h = layer(x)
    s = layer.stream()
    assert rel_err(s.step(x[0]), want[0]) < 1e-6 and rel_err(s.state, h) < 1e-6


def test_torch_lstm_is_a_second_oracle():
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(7, 19, num_layers=2).eval()
    layer = fastrnn.LSTM(7, 19, num_layers=2).eval()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(9, 3, 7)
    with torch.no_grad():
        want, (h, c) = ref(x)
    s = layer.stream(3)
    got = np.stack([s.step(x[t].numpy()) for t in range(9)])
    assert rel_err(got, want.numpy()) < 2e-6
    assert rel_err(s.state[0], h.numpy()) < 2e-6 and rel_err(s.state[1], c.numpy()) < 2e-6


# ---- slots: reset, active, state ---------------------------------------------------------------

@pytest.mark.parametrize("N", [4, 10])
def test_reset_starts_a_slot_over(N):
    layer = make("lstm")
    x = np.random.default_rng(3).standard_normal((8, N, 7)).astype(np.float32)
    s = layer.stream(N)
    outs = [s.step(x[t]) for t in range(3)]
    s.reset([1, N - 1])
    outs += [s.step(x[t]) for t in range(3, 8)]
    got = np.stack(outs)
    want, _ = layer(x)
    others = [n for n in range(N) if n not in (1, N - 1)]
    assert rel_err(got[:, others], want[:, others]) < 1e-6
    fresh, _ = layer(x[3:, [1, N - 1]])  # the reset slots run from a zero state at step 3
    assert rel_err(got[3:, [1, N - 1]], fresh) < 1e-6
    assert rel_err(got[:3, [1, N - 1]], want[:3, [1, N - 1]]) < 1e-6


@pytest.mark.parametrize("name", ["lstm", "gru", "layernorm_lstm", "lstm_proj", "ligru"])
@pytest.mark.parametrize("N", [3, 10])
def test_inactive_slots_keep_their_state(name, N):
    layer = make(name)
    x = np.random.default_rng(4).standard_normal((6, N, 7)).astype(np.float32)
    s = layer.stream(N)
    active = np.ones(N, bool)
    active[1] = False
    got = []
    for t in range(6):
        got.append(s.step(x[t], active=active if t in (2, 3) else None))
    got = np.stack(got)
    assert np.all(got[2:4, 1] == 0)  # a waiting slot's output rows are zero
    want, _ = layer(x)
    rest = [n for n in range(N) if n != 1]
    assert rel_err(got[:, rest], want[:, rest]) < tol(name, np.float32)
    skipped, _ = layer(x[[0, 1, 4, 5]][:, [1]])  # slot 1 saw steps 0, 1, 4, 5 only
    assert rel_err(got[[0, 1, 4, 5]][:, [1]], skipped) < tol(name, np.float32)


def test_state_get_set_and_reset_to_values():
    layer = make("lstm")
    x = np.random.default_rng(5).standard_normal((5, 4, 7)).astype(np.float32)
    g = np.random.default_rng(6)
    h0 = g.standard_normal((2, 4, 19)).astype(np.float32)
    c0 = g.standard_normal((2, 4, 19)).astype(np.float32)
    want, (h_n, c_n) = layer(x, (h0, c0))
    s = layer.stream(4)
    s.state = (h0, c0)
    got = np.stack([s.step(x[t]) for t in range(5)])
    assert rel_err(got, want) < 1e-6
    h, c = s.state
    assert rel_err(h, h_n) < 1e-6 and rel_err(c, c_n) < 1e-6
    h[...] = 0  # a copy: the stream's state is unchanged
    assert rel_err(s.state[0], h_n) < 1e-6
    s.reset([2], h=h0[:, [2]], c=c0[:, [2]])
    assert np.array_equal(s.state[0][:, 2], h0[:, 2]) and np.array_equal(s.state[1][:, 2], c0[:, 2])
    assert rel_err(s.state[0][:, 0], h_n[:, 0]) < 1e-6
    s.reset(3)
    assert not s.state[0][:, 3].any() and not s.state[1][:, 3].any()


def test_lists_take_the_stream_dtype():
    layer = make("gru", L=1)
    s = layer.stream(2)
    x = np.random.default_rng(0).standard_normal((2, 7)).astype(np.float32)
    assert rel_err(s.step(x.tolist()), layer(x[None])[0][0]) < 1e-6


def test_out_is_reused():
    layer = make("gru")
    s = layer.stream(2)
    out = np.empty((2, 19), np.float32)
    x = np.ones((2, 7), np.float32)
    assert s.step(x, out=out) is out
    chunk = np.empty((3, 2, 19), np.float32)
    assert s.step(np.ones((3, 2, 7), np.float32), out=chunk) is chunk


def test_batch_first_chunks():
    layer = fastrnn.GRU(7, 19, batch_first=True, rng=0).eval()
    x = np.random.default_rng(7).standard_normal((3, 6, 7)).astype(np.float32)  # [N, T, C]
    want, _ = layer(x)
    s = layer.stream(3)
    got = np.concatenate([s.step(x[:, :2]), s.step(x[:, 2:])], axis=1)
    assert got.shape == want.shape and rel_err(got, want) < 1e-6


# ---- weights: updates are never stale ------------------------------------------------------------

@pytest.mark.parametrize("N", [2, 12])
@pytest.mark.parametrize("how", ["in_place_write", "load_state_dict", "replace_array", "optimizer"])
def test_weight_update_is_seen(how, N):
    layer = make("lstm")
    x = np.random.default_rng(8).standard_normal((2, N, 7)).astype(np.float32)
    s = layer.stream(N)
    s.step(x[0])
    state = s.state
    if how == "in_place_write":
        layer.params["weight_hh_l1"] *= 0.5
        layer.params["weight_ih_l0"][0] += 1.0
    elif how == "load_state_dict":
        other = fastrnn.LSTM(7, 19, num_layers=2, rng=9)
        layer.load_state_dict(other.state_dict())
    elif how == "replace_array":
        layer.params["weight_hh_l0"] = np.ascontiguousarray(layer.params["weight_hh_l0"][::-1])
    else:
        layer.train()
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
        fastrnn.optim.SGD(layer, lr=0.5).step()
        layer.eval()
    got = s.step(x[1])
    want, _ = layer(x[1:], state)
    assert rel_err(got, want) < 1e-6


def test_a_replaced_entry_is_told_by_identity_and_a_deleted_one_is_named():
    """The check that a layer's arrays were not replaced compares identities: a copy of equal
    values is a new array, whose later in-place writes the next step must see. A deleted entry is
    named by the next step."""
    layer = make("gru", L=1)
    x = np.ones((1, 7), np.float32)
    s = layer.stream(1)
    s.step(x)
    layer.params["bias_hh_l0"] = layer.params["bias_hh_l0"].copy()  # equal values, a new array
    s.step(x)  # a check by value would keep the old array here
    layer.params["bias_hh_l0"][...] += 0.5  # an in-place write to the new one
    s.reset()
    want, _ = copy.deepcopy(layer)(x[None])  # a copy makes its plan anew
    assert rel_err(s.step(x), want[0]) < 1e-6
    del layer.params["weight_hh_l0"]
    with pytest.raises(KeyError, match="weight_hh_l0"):
        s.step(x)


def test_non_contiguous_params_are_copied_every_step():
    layer = make("gru", L=1)
    w = np.asfortranarray(layer.params["weight_hh_l0"])
    layer.params["weight_hh_l0"] = w
    s = layer.stream(1)
    x = np.ones((1, 7), np.float32)
    s.step(x)
    w *= 0.25  # a write to the non-contiguous array the layer holds
    s.reset()
    want, _ = layer(x[None])
    assert rel_err(s.step(x), want[0]) < 1e-6


# ---- threads --------------------------------------------------------------------------------------

def test_streams_of_one_layer_step_concurrently():
    layer = make("lstm", H=64)
    xs = [np.random.default_rng(10 + i).standard_normal((40, 2, 7)).astype(np.float32) for i in range(4)]
    wants = [layer(x)[0] for x in xs]
    gots = [None] * 4
    barrier = threading.Barrier(4)

    def run(i):
        s = layer.stream(2)
        barrier.wait()
        gots[i] = np.stack([s.step(xs[i][t]) for t in range(40)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(gots, wants):
        assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh", "lstm_proj", "layernorm_gru", "ligru"])
@pytest.mark.parametrize("N", [1, 3])
def test_two_threads_split_each_step_by_units(name, N):
    """With 2 threads a streaming step of a few slots runs its input product and its recurrence
    on both, each thread on the gate rows of its own units (weight-stationary), in one parallel
    region (two when LayerNorm or batch norm needs the whole projection first), and gives bitwise what one
    thread gives. C = 256: the input product counts in the planner's step work (an LSTMP's
    5-unit recurrence has too little work without it); the RNN gets H = 384, as its step at
    H = 256 and N = 1 is too small for a single-step call to split (see the next test)."""
    H = 384 if name == "rnn_tanh" else 256
    layer = make(name, C=256, H=H, L=1)
    x = np.random.default_rng(3).standard_normal((6, N, 256)).astype(np.float32)
    previous, backoff = fastrnn.get_num_threads(), fastrnn._C._set_thread_backoff(False)
    try:
        outs = {}
        for threads in (1, 2):
            fastrnn.set_num_threads(threads)
            s = layer.stream(N)
            fastrnn._C._record_regions(True)
            outs[threads] = np.stack([s.step(x[t]) for t in range(6)])
            regions = fastrnn._C._record_regions(False)
            assert s._core.in_place
            if threads == 2:  # the input product inside the recurrence's region, unless normalized first
                normalized = name in ("layernorm_gru", "ligru")  # LayerNorm, Li-GRU's batch norm
                assert regions.count(("input rows", 2, 2, "pool")) == (6 if normalized else 0), regions
                assert regions.count(("recurrence", 2, 2, "pool")) == 6, regions
            else:
                assert all(r[1] == 1 for r in regions), regions
        np.testing.assert_array_equal(outs[1], outs[2])
    finally:
        fastrnn.set_num_threads(previous)
        fastrnn._C._set_thread_backoff(backoff)


@pytest.mark.parametrize("H,frames,threads", [(128, 1, 1), (160, 1, 2), (128, 8, 2)])
def test_two_threads_only_for_steps_that_pay(H, frames, threads):
    """A call of one frame starts a parallel region for one step, and waking the second thread
    costs a few microseconds: an LSTM stream step at H = 128 (2.6e5 flops) took 7.2 us on two
    threads against 6.5 on one, at H = 160 (4.1e5) 10.1 against 12.1. One-frame calls split from
    3.2e5 flops per step; a chunk of frames shares one region and splits from 2.4e5, as sequences."""
    layer = fastrnn.LSTM(H, H, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((frames, 1, H)).astype(np.float32)
    previous, backoff = fastrnn.get_num_threads(), fastrnn._C._set_thread_backoff(False)
    try:
        fastrnn.set_num_threads(2)
        s = layer.stream(1)
        fastrnn._C._record_regions(True)
        s.step(x if frames > 1 else x[0])
        regions = fastrnn._C._record_regions(False)
        assert [r[1] for r in regions if r[0] == "recurrence"] == [threads], regions
    finally:
        fastrnn.set_num_threads(previous)
        fastrnn._C._set_thread_backoff(backoff)


def test_the_kept_step_setup_follows_the_isa_and_the_threads():
    """A stream keeps its step's setup (kernels, thread plan, workspace) from one step to the next
    and makes it again when what it was made from changes: after set_isa the next step computes
    bitwise what a new stream computes on that ISA, and after set_num_threads(2) a step that pays
    for two threads (LSTM H = 256, one frame) takes them."""
    layer = fastrnn.LSTM(256, 256, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((4, 1, 256)).astype(np.float32)
    isa, previous, backoff = fastrnn.get_isa(), fastrnn.get_num_threads(), fastrnn._C._set_thread_backoff(False)
    try:
        fastrnn.set_num_threads(1)
        s = layer.stream(1)
        s.step(x[0])
        for other in [i for i in fastrnn.available_isas() if i != isa]:
            fastrnn.set_isa(other)
            fresh = layer.stream(1)
            fresh.state = s.state
            np.testing.assert_array_equal(s.step(x[1]), fresh.step(x[1]), err_msg=other)
        fastrnn.set_isa(isa)
        s.step(x[2])
        fastrnn.set_num_threads(2)
        fastrnn._C._record_regions(True)
        s.step(x[3])
        regions = fastrnn._C._record_regions(False)
        assert [r[1] for r in regions if r[0] == "recurrence"] == [2], regions
    finally:
        fastrnn.set_isa(isa)
        fastrnn.set_num_threads(previous)
        fastrnn._C._set_thread_backoff(backoff)


@pytest.mark.parametrize("first,then", [("own", "blas"), ("blas", "own")])
def test_the_kept_step_setup_follows_the_input_product_choice(first, then):
    """A chunk of 2,048 frames may take the input product on fastrnn's microkernel or on BLAS
    (their sums differ in the last bits): after the choice changes, the kept stream computes
    bitwise what a new stream computes (it kept the old choice before, a review found)."""
    layer = fastrnn.GRU(16, 16, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((2, 2048, 1, 16)).astype(np.float32)
    try:
        fastrnn._C._set_input_gemm(first)
        s = layer.stream(1)
        s.step(x[0])
        fastrnn._C._set_input_gemm(then)
        fresh = layer.stream(1)
        fresh.state = s.state
        np.testing.assert_array_equal(s.step(x[1]), fresh.step(x[1]))
    finally:
        fastrnn._C._set_input_gemm("detect")


def test_one_stream_from_two_threads_is_refused():
    s = make("gru").stream(1)
    s._lock.acquire()  # another thread is inside step
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            s.step(np.ones((1, 7), np.float32))
        with pytest.raises(RuntimeError, match="another thread"):
            s.reset()
    finally:
        s._lock.release()
    s.step(np.ones((1, 7), np.float32))


# ---- refusals ----------------------------------------------------------------------------------

def test_core_step_keeps_a_converted_active_mask_alive():
    """The binding converts an `active` that is not a bool array (a list) and must keep the
    converted array until the step has read it. In a fresh process with malloc's mmap threshold
    fixed, the 2 MB array of 2**21 slots has a mapping of its own, which a free unmaps: a step
    reading it after the free crashes."""
    code = (
        "import numpy as np, fastrnn\n"
        "N = 1 << 21\n"
        "x = np.ones((N, 1), np.float32)\n"
        "mask = np.arange(N) % 3 == 0\n"
        "out, want = np.empty((N, 1), np.float32), np.empty((N, 1), np.float32)\n"
        "fastrnn.GRU(1, 1, rng=0).eval().stream(N)._core.step(x, out, mask.tolist())\n"
        "fastrnn.GRU(1, 1, rng=0).eval().stream(N)._core.step(x, want, mask)\n"
        "assert np.array_equal(out, want) and np.count_nonzero(out[~mask]) == 0\n")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("H", [9, 61, 128])
def test_a_slot_does_not_depend_on_the_other_slots(name, H):
    """With the weights read in place (up to 8 slots) every slot's dot products add in the same
    order whatever the number of slots and the passes they take: a slot's output is bit for bit
    the same as a one-slot stream's."""
    layer = make(name, C=H, H=H, L=1)
    x = np.random.default_rng(H).standard_normal((3, 1, H)).astype(np.float32)
    one = layer.stream(1)
    want = np.stack([one.step(x[t]) for t in range(3)])
    for N in range(2, 9):
        s = layer.stream(N)
        assert s._core.in_place
        got = np.stack([s.step(np.repeat(x[t], N, axis=0)) for t in range(3)])
        assert np.array_equal(got, np.repeat(want, N, axis=1)), N


def test_bad_input_is_named():
    layer = make("lstm")
    s = layer.stream(3)
    with pytest.raises(ValueError, match=r"x: shape \(2, 7\), expected \(N, C\) = \(3, 7\)"):
        s.step(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"x: shape \(3, 5\)"):
        s.step(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"x: shape \(7,\)"):
        s.step(np.ones(7, np.float32))
    with pytest.raises(TypeError, match="x: dtype float64, expected float32"):
        s.step(np.ones((3, 7)))
    with pytest.raises(ValueError, match=r"out: shape \(3, 5\), expected \(3, 19\)"):
        s.step(np.ones((3, 7), np.float32), out=np.empty((3, 5), np.float32))
    with pytest.raises(TypeError, match="out: dtype float64"):
        s.step(np.ones((3, 7), np.float32), out=np.empty((3, 19)))
    with pytest.raises(ValueError, match=r"active: expected a contiguous bool array of shape \(3,\)"):
        s.step(np.ones((3, 7), np.float32), active=np.ones(2, bool))
    with pytest.raises(TypeError, match="active must be a bool array"):
        s.step(np.ones((3, 7), np.float32), active=[1, 0, 1])
    with pytest.raises(ValueError, match=r"slots \[3\] outside \[0, 3\)"):
        s.reset([3])
    with pytest.raises(ValueError, match=r"h has shape \(2, 1, 5\), expected \(2, 1, 19\)"):
        s.reset([0], h=np.zeros((2, 1, 5), np.float32))
    with pytest.raises(TypeError, match="h has dtype float64"):
        s.reset([0], h=np.zeros((2, 1, 19)))
    with pytest.raises(TypeError, match="tuple"):
        s.state = np.zeros((2, 3, 19), np.float32)
    x = np.ones((3, 7), np.float32)
    before = x.copy()
    s.step(x)
    assert np.array_equal(x, before)  # nothing the caller passed is modified


def test_bidirectional_training_and_batch_are_refused():
    with pytest.raises(ValueError, match="bidirectional layer cannot stream"):
        fastrnn.GRU(3, 4, bidirectional=True).eval().stream()
    with pytest.raises(RuntimeError, match="training mode"):
        fastrnn.GRU(3, 4).stream()
    with pytest.raises(ValueError, match="batch must be >= 1"):
        fastrnn.GRU(3, 4).eval().stream(0)
    with pytest.raises(TypeError, match="batch must be an int"):
        fastrnn.GRU(3, 4).eval().stream(1.5)
    layer = fastrnn.GRU(3, 4).eval()
    s = layer.stream(1)
    layer.train()
    with pytest.raises(RuntimeError, match="training mode"):
        s.step(np.ones((1, 3), np.float32))
    layer.eval()
    s.step(np.ones((1, 3), np.float32))


# ---- fastrnn.torch ---------------------------------------------------------------------------------

def test_torch_module_stream():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    for cls, kw in ((ft.LSTM, {}), (ft.GRU, {}), (ft.RNN, {"nonlinearity": "relu"}), (ft.LSTM, {"proj_size": 3}),
                    (ft.LayerNormGRU, {})):
        m = cls(5, 8, num_layers=2, **kw).eval()
        x = torch.randn(7, 3, 5)
        with torch.no_grad():
            want, hx = m(x)
        s = m.stream(3)
        got = torch.stack([s.step(x[t]) for t in range(7)])
        assert isinstance(got, torch.Tensor) and rel_err(got.numpy(), want.numpy()) < 1e-6
        h = s.state[0] if isinstance(s.state, tuple) else s.state
        assert isinstance(h, torch.Tensor)
        with torch.no_grad():  # an optimizer-style in-place update is used by the next step
            m.weight_hh_l0.mul_(0.5)
            want2, _ = m(x[:1], hx)
        assert rel_err(s.step(x[0]).numpy(), want2[0].numpy()) < 1e-6
    out = torch.empty(3, 8)
    assert s.step(x[0], out=out) is out


def test_torch_stream_refusals():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    with pytest.raises(ValueError, match="bidirectional"):
        ft.GRU(3, 4, bidirectional=True).eval().stream()
    with pytest.raises(RuntimeError, match="training mode"):
        ft.GRU(3, 4).stream()
    s = ft.GRU(3, 4).eval().stream(2)
    with pytest.raises(RuntimeError, match="is on meta; streams run on CPU tensors"):
        s.step(torch.zeros(2, 3, device="meta"))
    with pytest.raises(TypeError, match="x must be a Tensor"):
        s.step(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="dtype float64"):
        s.step(torch.zeros(2, 3, dtype=torch.float64))
    m = ft.GRU(3, 4).eval()
    m.to("meta")
    with pytest.raises(RuntimeError, match="streams run on CPU tensors"):
        m.stream()


def test_stream_class_is_public():
    assert isinstance(fastrnn.GRU(2, 3).eval().stream(), Stream)


# ---- the C ABI (fastrnn_stream_*), the C example, Cython ------------------------------------------

def _capi():
    import ctypes
    import test_capi as tc
    import test_capi_plan as tp
    P, I64, V = ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
    for name, (args, res) in {
        "fastrnn_stream_create": ([P, I64, ctypes.c_double, ctypes.c_double, P], ctypes.c_int),
        "fastrnn_stream_destroy": ([P], None),
        "fastrnn_stream_step": ([P, I64, V, V, V], ctypes.c_int),
        "fastrnn_stream_reset": ([P, V, I64], ctypes.c_int),
        "fastrnn_stream_get_state": ([P, V, V], ctypes.c_int),
        "fastrnn_stream_set_state": ([P, V, V], ctypes.c_int),
    }.items():
        getattr(tc.lib, name).argtypes, getattr(tc.lib, name).restype = args, res
    return ctypes, tc, tp


class CStream:
    def __init__(self, plan, N, zh=0.0, zc=0.0):
        ctypes, tc, _ = _capi()
        self.tc, self.plan, self.N = tc, plan, N
        self.handle = ctypes.c_void_p()
        self.status = tc.lib.fastrnn_stream_create(plan.handle, N, zh, zc, ctypes.byref(self.handle))

    def __del__(self):
        self.tc.lib.fastrnn_stream_destroy(self.handle)

    def step(self, x, active=None):
        layer = self.plan.layer
        y = np.zeros((x.shape[0], self.N, layer.proj_size or layer.hidden_size), layer.dtype)
        st = self.tc.lib.fastrnn_stream_step(self.handle, x.shape[0], self.tc.ptr(x), self.tc.ptr(y),
                                             None if active is None else active.ctypes.data)
        assert st == self.tc.OK, self.tc.last_error()
        return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [2, 12])
@pytest.mark.parametrize("name,cell,fields", [("lstm", "lstm", {}), ("gru_reset_before", "gru", {}),
                                              ("lstm_proj_peephole", "lstm", {"proj_size": 5, "peephole": 1}),
                                              ("layernorm_lstm", "lstm", {"layer_norm": 1}),
                                              ("ligru", "ligru", {}), ("sligru", "sligru", {})])
def test_c_stream_equals_python(name, cell, fields, N, dtype):
    ctypes, tc, tp = _capi()
    layer = make(name, dtype=dtype)
    plan = tp.CPlan(layer, cell, **fields)
    s = CStream(plan, N)
    assert s.status == tc.OK, tc.last_error()
    x = np.random.default_rng(11).standard_normal((7, N, 7)).astype(dtype)
    want, hx = layer(x)
    got = np.concatenate([s.step(x[:3])] + [s.step(x[t:t + 1]) for t in range(3, 7)])
    assert rel_err(got, want) < tol(name, dtype)
    lstm = layer._cell() == "lstm"
    h = np.zeros((2, N, layer.proj_size or 19), dtype)
    c = np.zeros((2, N, 19), dtype) if lstm else None
    assert tc.lib.fastrnn_stream_get_state(s.handle, tc.ptr(h), tc.ptr(c)) == tc.OK
    assert rel_err(h, hx[0] if lstm else hx) < tol(name, dtype)
    # the state set back, a slot reset, the weights written in place between steps
    assert tc.lib.fastrnn_stream_set_state(s.handle, tc.ptr(np.zeros_like(h)), tc.ptr(None if c is None else
                                                                                        np.zeros_like(c))) == tc.OK
    slots = np.array([0], np.int64)
    assert tc.lib.fastrnn_stream_reset(s.handle, tc.ptr(slots), 1) == tc.OK
    plan.params *= 0.5
    layer.load_state_dict({k: v for k, v in plan.unflatten(plan.params).items()}, strict=False)
    want2, _ = layer(x[:2])
    assert rel_err(np.concatenate([s.step(x[:1]), s.step(x[1:2])]), want2) < tol(name, dtype)
    active = np.array([1] + [0] * (N - 1), np.uint8)
    y = s.step(x[2:3], active)
    assert not y[0, 1:].any()


def test_c_stream_errors():
    ctypes, tc, tp = _capi()
    layer = make("gru")
    plan = tp.CPlan(layer, "gru")
    bad = CStream(plan, 0)
    tc.expect_error(bad.status, tc.INVALID, "batch")
    bi = fastrnn.GRU(7, 19, bidirectional=True).eval()
    tc.expect_error(CStream(tp.CPlan(bi, "gru"), 2).status, tc.INVALID, "bidirectional")
    s = CStream(plan, 2)
    x = np.ones((1, 2, 7), np.float32)
    y = np.empty((1, 2, 19), np.float32)
    tc.expect_error(tc.lib.fastrnn_stream_step(s.handle, 0, tc.ptr(x), tc.ptr(y), None), tc.INVALID, "steps")
    tc.expect_error(tc.lib.fastrnn_stream_step(s.handle, 1, None, tc.ptr(y), None), tc.INVALID, "x: NULL")
    tc.expect_error(tc.lib.fastrnn_stream_step(None, 1, tc.ptr(x), tc.ptr(y), None), tc.INVALID, "stream: NULL")
    slots = np.array([2], np.int64)
    tc.expect_error(tc.lib.fastrnn_stream_reset(s.handle, tc.ptr(slots), 1), tc.INVALID, "slot 2")
    tc.expect_error(tc.lib.fastrnn_stream_get_state(s.handle, None, None), tc.INVALID, "both NULL")
    tc.expect_error(tc.lib.fastrnn_stream_create(plan.handle, 1, 0.0, 0.5, ctypes.byref(ctypes.c_void_p())),
                    tc.INVALID, "zoneout")


ALLOC_COUNTER = r"""
#define _GNU_SOURCE
#include <fastrnn/fastrnn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
static volatile int counting;
static volatile long count;
void* malloc(size_t n) { if (counting) count++; return __libc_malloc(n); }
void* calloc(size_t a, size_t b) { if (counting) count++; return __libc_calloc(a, b); }
void* realloc(void* p, size_t n) { if (counting) count++; return __libc_realloc(p, n); }
void* aligned_alloc(size_t a, size_t n) { if (counting) count++; return __libc_memalign(a, n); }
void* memalign(size_t a, size_t n) { if (counting) count++; return __libc_memalign(a, n); }
int posix_memalign(void** p, size_t a, size_t n) { if (counting) count++; *p = __libc_memalign(a, n); return *p ? 0 : 12; }

static int run(int cell, long N, long k, int alternate) {  /* alternate: chunks of k and k - 1 */
    fastrnn_desc d; fastrnn_desc_init(&d);
    d.cell = cell; d.dtype = FASTRNN_FLOAT32; d.input_size = 24; d.hidden_size = 40; d.num_layers = 2;
    fastrnn_plan* plan; fastrnn_stream* s;
    if (fastrnn_plan_create(&d, NULL, &plan)) return -1;
    int64_t np_, nb; fastrnn_plan_param_count(plan, &np_, &nb);
    float* params = calloc((size_t)np_, 4); float* x = calloc((size_t)(k * N * 24), 4);
    float* y = calloc((size_t)((k + 2) * N * 40), 4); unsigned char* active = calloc((size_t)N, 1);
    for (long i = 0; i < np_; ++i) params[i] = 0.01f * (float)(i % 13);
    for (long i = 0; i < N; ++i) active[i] = i % 2;
    if (fastrnn_plan_set_params(plan, params, NULL) || fastrnn_stream_create(plan, N, 0, 0, &s)) return -1;
    fastrnn_stream_step(s, k, x, y, NULL);  /* the first step allocates the stream's workspace */
    fastrnn_stream_step(s, k, x, y, active);
    if (alternate) fastrnn_stream_step(s, k - 1, x, y, NULL);  /* and the other length's, the thread's */
    counting = 1;
    for (int i = 0; i < 300; ++i)
        if (fastrnn_stream_step(s, alternate && i % 2 ? k - 1 : k, x, y, i % 3 ? NULL : active)) {
            counting = 0;
            return -1;
        }
    int64_t slot = 0;
    fastrnn_stream_reset(s, &slot, 1);
    fastrnn_stream_get_state(s, y, NULL);
    counting = 0;
    fastrnn_stream_destroy(s); fastrnn_plan_destroy(plan);
    free(params); free(x); free(y); free(active);
    return 0;
}

int main(void) {
    fastrnn_set_num_threads(1);
    if (run(FASTRNN_LSTM, 1, 1, 0) || run(FASTRNN_GRU, 3, 2, 0) || run(FASTRNN_LSTM, 12, 1, 0) ||
        run(FASTRNN_GRU, 2, 3, 1)) {
        printf("error %s\n", fastrnn_last_error()); return 1;
    }
    printf("allocations %ld\n", count);
    return 0;
}
"""


def test_c_stream_steps_allocate_nothing(tmp_path):
    _, tc, _ = _capi()
    if tc.CC is None:
        pytest.skip("no C compiler")
    import sys
    src = tmp_path / "count.c"
    src.write_text(ALLOC_COUNTER)
    flags = subprocess.run([sys.executable, "-m", "fastrnn", "config", "--cflags", "--libs"], env=tc.ENV,
                           capture_output=True, text=True, check=True).stdout.split()
    exe = tmp_path / "count"
    r = subprocess.run([tc.CC, "-O1", "-rdynamic", str(src), *flags, "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "allocations 0", r.stdout


def test_c_latency_example(tmp_path):
    _, tc, _ = _capi()
    if tc.CC is None:
        pytest.skip("no C compiler")
    import os
    import sys
    flags = subprocess.run([sys.executable, "-m", "fastrnn", "config", "--cflags", "--libs"], env=tc.ENV,
                           capture_output=True, text=True, check=True).stdout.split()
    exe = tmp_path / "stream_latency"
    r = subprocess.run([tc.CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
                        os.path.join(tc.EXAMPLES, "c", "stream_latency.c"), *flags, "-lm", "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "gru", "32", "2000", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "p50" in r.stdout and "p99" in r.stdout and r.stdout.count("#") > 10
    assert "a step of 0 frames: fastrnn_stream_step: steps" in r.stdout



def test_layer_arrays_start_on_cache_lines():
    """The kernels stream weight rows with full-vector loads: a row that straddles cache lines
    costs two lines per load (NumPy aligns to 16 bytes; a stream step took 2.2x as long)."""
    import copy
    import pickle
    layer = fastrnn.LSTM(7, 19, num_layers=2, rng=0)
    li = fastrnn.LiGRU(7, 19, rng=0)
    for obj in (layer, pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer), li, pickle.loads(pickle.dumps(li))):
        for group in (obj.params, obj.grads, obj.buffers):
            for name, a in group.items():
                assert a.ctypes.data % 64 == 0, name
                assert a.flags.c_contiguous and a.flags.writeable
    assert np.array_equal(pickle.loads(pickle.dumps(layer)).params["weight_hh_l1"], layer.params["weight_hh_l1"])


def test_torch_ligru_stream():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    for cls, kw in ((ft.LiGRU, {}), (ft.SLiGRU, {}), (ft.LiGRU, {"normalization": "layernorm", "nonlinearity": "tanh"})):
        m = cls(8, input_shape=(3, 5, 6), num_layers=2, **kw).eval()
        x = torch.randn(3, 5, 6)
        with torch.no_grad():
            want, hh = m(x)
        s = m.stream(3)
        got = torch.stack([s.step(x[:, t]) for t in range(5)], 1)
        assert rel_err(got.numpy(), want.numpy()) < 1e-5 and rel_err(s.state.numpy(), hh.numpy()) < 1e-5
        s.reset()
        assert rel_err(torch.cat([s.step(x[:, :2]), s.step(x[:, 2:])], 1).numpy(), want.numpy()) < 1e-5
    with pytest.raises(ValueError, match="bidirectional"):
        ft.LiGRU(8, input_shape=(3, 5, 6), bidirectional=True).eval().stream()
    with pytest.raises(RuntimeError, match="training mode"):
        ft.LiGRU(8, input_shape=(3, 5, 6)).stream()
