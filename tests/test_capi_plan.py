"""The C ABI's plans (fastrnn_plan_*): every cell and variant through ctypes against the Python
layers (the same masks), the flat layout and tensor names, weights written between calls, the
Li-GRU batch-norm buffers, and every validation error."""
import ctypes

import numpy as np
import pytest

import fastrnn
from test_capi import (INVALID, OK, TOL, BackwardOptions, check_struct_layouts, expect_error, last_error, lib,
                       make_desc, needs_cc, options, ptr, ref)

P, I64, SZ, V = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p
CELLS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "ligru": 4, "sligru": 5}
ACT = {"relu": 0, "tanh": 1, "sin": 2, "leaky_relu": 3}
NORM = {None: 0, "batchnorm": 1, "layernorm": 2}


class PlanOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("peephole", ctypes.c_int32), ("proj_size", ctypes.c_int64),
                ("layer_norm", ctypes.c_int32), ("zoneout_c", ctypes.c_int32), ("activation", ctypes.c_int32),
                ("normalization", ctypes.c_int32), ("bn_momentum", ctypes.c_double),
                ("recurrent_affine", ctypes.c_int32), ("compute", ctypes.c_int32)]


class TensorInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("buffer", ctypes.c_int32), ("name", ctypes.c_char_p),
                ("ndim", ctypes.c_int64), ("shape", ctypes.c_int64 * 2), ("offset", ctypes.c_int64),
                ("layer", ctypes.c_int64), ("direction", ctypes.c_int64)]


class CallOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("bn_frozen", ctypes.c_int32), ("dropout_masks", V),
                ("recurrent_dropout", V), ("zoneout_h", V), ("zoneout_c", V), ("zoneout_h_rate", ctypes.c_double),
                ("zoneout_c_rate", ctypes.c_double), ("weight_drop", V), ("candidate_dropout", V)]


PLAN_STRUCTS = {"fastrnn_plan_options": PlanOptions, "fastrnn_tensor_info": TensorInfo,
                "fastrnn_plan_call_options": CallOptions}

for _name, (_args, _res) in {
    "fastrnn_plan_options_init_": ([P, SZ], ctypes.c_int), "fastrnn_plan_create": ([P, P, P], ctypes.c_int),
    "fastrnn_plan_destroy": ([P], None), "fastrnn_plan_param_count": ([P, P, P], ctypes.c_int),
    "fastrnn_plan_tensor_count": ([P, P], ctypes.c_int), "fastrnn_plan_tensor_info": ([P, I64, P], ctypes.c_int),
    "fastrnn_plan_set_params": ([P, V, V], ctypes.c_int),
    "fastrnn_plan_cache_size": ([P, I64, I64, ctypes.c_int, P], ctypes.c_int),
    "fastrnn_plan_forward": ([P, I64, I64, V, V, V, V, V, V, V, V, SZ, P], ctypes.c_int),
    "fastrnn_plan_backward": ([P, V, V, V, SZ, V, V, V, V, V, V, V, P, P], ctypes.c_int),
    "fastrnn_plan_packed_bytes": ([P, P], ctypes.c_int),
}.items():
    getattr(lib, _name).argtypes, getattr(lib, _name).restype = _args, _res


def plan_options(**fields):
    o = PlanOptions()
    assert lib.fastrnn_plan_options_init_(ctypes.byref(o), ctypes.sizeof(o)) == OK, last_error()
    for k, v in fields.items():
        setattr(o, k, v)
    return o


class CPlan:
    """A C plan for a fastrnn layer (its settings), reading flat copies of the layer's arrays."""

    def __init__(self, layer, cell, **fields):
        self.layer, self.dtype = layer, layer.dtype
        d = make_desc("gru" if cell == "gru" else "lstm", layer.dtype, 1, 1, layer.input_size, layer.hidden_size,
                      layer.num_layers, 2 if layer.bidirectional else 1, layer.bias)
        d.cell, d.reset_after = CELLS[cell], int(getattr(layer, "reset_after", True))
        d.seq_len = d.batch = 0  # not used by plans
        self.desc = d
        self.handle = ctypes.c_void_p()
        status = lib.fastrnn_plan_create(ctypes.byref(d), ctypes.byref(plan_options(**fields)),
                                         ctypes.byref(self.handle))
        assert status == OK, last_error()
        self.params = np.concatenate([v.ravel() for v in layer.params.values()])
        bufs = list(getattr(layer, "buffers", {}).values())
        self.buffers = np.concatenate([v.ravel() for v in bufs]) if bufs else None
        assert lib.fastrnn_plan_set_params(self.handle, ptr(self.params), ptr(self.buffers)) == OK, last_error()

    def __del__(self):
        lib.fastrnn_plan_destroy(self.handle)

    def counts(self):
        p, b = ctypes.c_int64(), ctypes.c_int64()
        assert lib.fastrnn_plan_param_count(self.handle, ctypes.byref(p), ctypes.byref(b)) == OK, last_error()
        return p.value, b.value

    def cache(self, T, N, dropout=False):
        n = ctypes.c_size_t()
        assert lib.fastrnn_plan_cache_size(self.handle, T, N, int(dropout), ctypes.byref(n)) == OK, last_error()
        return np.zeros(n.value, np.uint8)

    def forward(self, x, h0=None, c0=None, lengths=None, cache=None, call=None):
        T, N, _ = x.shape
        L, D, K = self.layer.num_layers, 2 if self.layer.bidirectional else 1, self.layer.proj_size or self.layer.hidden_size
        y = np.zeros((T, N, D * K), self.dtype)
        h_n = np.zeros((L * D, N, K), self.dtype)
        c_n = np.zeros((L * D, N, self.layer.hidden_size), self.dtype) if self.layer._cell() == "lstm" else None
        status = lib.fastrnn_plan_forward(self.handle, T, N, ptr(x), ptr(h0), ptr(c0), ptr(lengths), ptr(y), ptr(h_n),
                                          ptr(c_n), ptr(cache), 0 if cache is None else cache.nbytes, ref(call))
        return status, y, h_n, c_n

    def backward(self, x, cache, go, ghn=None, gcn=None, lengths=None, call=None, opts=None):
        grads = np.zeros_like(self.params)
        gx = np.zeros_like(x)
        gh0 = np.zeros((self.layer.num_layers * (2 if self.layer.bidirectional else 1), x.shape[1],
                        self.layer.proj_size or self.layer.hidden_size), self.dtype)
        status = lib.fastrnn_plan_backward(self.handle, ptr(x), ptr(lengths), ptr(cache), cache.nbytes, ptr(go),
                                           ptr(ghn), ptr(gcn), ptr(gx), ptr(gh0), None, ptr(grads), ref(call), ref(opts))
        return status, gx, gh0, grads

    def unflatten(self, flat):
        out, at = {}, 0
        for k, v in self.layer.params.items():
            out[k] = flat[at:at + v.size].reshape(v.shape)
            at += v.size
        return out


def call_options(ctx=None, **fields):
    """The call options of a Python training forward: its inter-layer and regularizer masks."""
    c = CallOptions(struct_size=ctypes.sizeof(CallOptions))
    if ctx is not None:
        c.dropout_masks = ptr(ctx.masks)
        noise = dict(zip(("rec_mask", "zh_mask", "zc_mask", "zh_rate", "zc_rate", "w_mask", "cand_mask"),
                         ctx.noise or (None,) * 7))
        for key, field in (("rec_mask", "recurrent_dropout"), ("zh_mask", "zoneout_h"), ("zc_mask", "zoneout_c"),
                           ("w_mask", "weight_drop"), ("cand_mask", "candidate_dropout")):
            setattr(c, field, ptr(noise.get(key)))
        c.bn_frozen = int(ctx.bn_frozen)
    for k, v in fields.items():
        setattr(c, k, v)
    return c


# cell, layer factory, plan options, extra C-call checks
CASES = {
    "lstm": ("lstm", lambda **k: fastrnn.LSTM(4, 6, 2, bidirectional=True, dropout=0.3, **k), {}),
    "lstmp_peephole_zoneout": ("lstm", lambda **k: fastrnn.LSTM(4, 6, 2, proj_size=3, peephole=True, zoneout_h=0.2,
                                                               zoneout_c=0.3, recurrent_dropout=0.2, **k),
                               dict(proj_size=3, peephole=1, zoneout_c=1)),
    "layernorm_lstm": ("lstm", lambda **k: fastrnn.LayerNormLSTM(4, 6, weight_drop=0.25, **k), dict(layer_norm=1)),
    "layernorm_gru": ("gru", lambda **k: fastrnn.LayerNormGRU(4, 6, bidirectional=True, zoneout_h=0.1, **k),
                      dict(layer_norm=1)),
    "gru_v1": ("gru", lambda **k: fastrnn.GRU(4, 6, reset_after=False, recurrent_dropout=0.3, **k), {}),
    "rnn_relu": ("rnn_relu", lambda **k: fastrnn.RNN(4, 6, 2, nonlinearity="relu", weight_drop=0.2, **k), {}),
    "ligru": ("ligru", lambda **k: fastrnn.LiGRU(4, 6, 2, bidirectional=True, candidate_dropout=0.2, dropout=0.2,
                                                **k), {}),
    "ligru_layernorm_tanh": ("ligru", lambda **k: fastrnn.LiGRU(4, 6, nonlinearity="tanh", normalization="layernorm",
                                                                **k), dict(activation=1, normalization=2)),
    "ligru_plain_sin": ("ligru", lambda **k: fastrnn.LiGRU(4, 6, nonlinearity="sin", normalization=None, **k),
                        dict(activation=2, normalization=0)),
    "sligru_affine": ("sligru", lambda **k: fastrnn.SLiGRU(4, 6, recurrent_affine=True, nonlinearity="leaky_relu",
                                                          momentum=0.1, candidate_dropout=0.1, **k),
                      dict(recurrent_affine=1, activation=3, bn_momentum=0.1)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_matches_python_layer(case, dtype):
    cell, make, fields = CASES[case]
    layer = make(dtype=dtype, rng=3)
    cplan = CPlan(layer, cell, **fields)
    T, N = 7, 3
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, N, 4)).astype(dtype)
    lengths = np.array([7, 3, 5], np.int64)

    # the flat arrays: the layer's tensors in its order, named as in Python
    n_params, n_buffers = cplan.counts()
    assert n_params == sum(v.size for v in layer.params.values())
    assert n_buffers == sum(v.size for v in getattr(layer, "buffers", {}).values())
    count = ctypes.c_int64()
    assert lib.fastrnn_plan_tensor_count(cplan.handle, ctypes.byref(count)) == OK
    names = list(layer.params) + list(getattr(layer, "buffers", {}))
    assert count.value == len(names)
    offsets = {False: 0, True: 0}
    for i, name in enumerate(names):
        info = TensorInfo(struct_size=ctypes.sizeof(TensorInfo))
        assert lib.fastrnn_plan_tensor_info(cplan.handle, i, ctypes.byref(info)) == OK, last_error()
        shape = (layer.params.get(name) if name in layer.params else layer.buffers[name]).shape
        assert info.name.decode() == name and bool(info.buffer) == (name not in layer.params)
        assert tuple(info.shape[:info.ndim]) == shape and info.offset == offsets[bool(info.buffer)]
        offsets[bool(info.buffer)] += int(np.prod(shape))

    # inference (the layer in eval mode: running statistics, expected zoneout)
    layer.eval()
    out, state = layer(x, lengths=lengths)
    zh, zc = getattr(layer, "zoneout_h", 0.0), getattr(layer, "zoneout_c", 0.0)
    status, y, h_n, _ = cplan.forward(x, lengths=lengths, call=call_options(zoneout_h_rate=zh, zoneout_c_rate=zc))
    assert status == OK, last_error()
    np.testing.assert_allclose(y, out, **TOL[dtype])
    np.testing.assert_allclose(h_n, state[0] if isinstance(state, tuple) else state, **TOL[dtype])

    # a training step with the layer's own masks
    layer.train().zero_grad()
    before = cplan.buffers.copy() if cplan.buffers is not None else None
    out, state = layer(x, lengths=lengths)
    ctx = layer._ctx
    call = call_options(ctx)
    go = rng.standard_normal(out.shape).astype(dtype)
    grad_x = layer.backward(go)[0]
    cache = cplan.cache(T, N, dropout=ctx.masks is not None)
    status, y, h_n, _ = cplan.forward(x, lengths=lengths, cache=cache, call=call)
    assert status == OK, last_error()
    np.testing.assert_allclose(y, out, **TOL[dtype])
    if before is not None:  # the training forward updated the running statistics as the layer did
        assert not np.array_equal(cplan.buffers, before)
        np.testing.assert_allclose(cplan.buffers, np.concatenate([v.ravel() for v in layer.buffers.values()]),
                                   **TOL[dtype])
    status, gx, _, grads = cplan.backward(x, cache, go, lengths=lengths, call=call)
    assert status == OK, last_error()
    np.testing.assert_allclose(gx, grad_x, **TOL[dtype])
    for k, g in cplan.unflatten(grads).items():
        scale = max(1.0, float(np.abs(layer.grads[k]).max()))
        np.testing.assert_allclose(g / scale, layer.grads[k] / scale, **TOL[dtype], err_msg=k)


def test_plan_reads_weights_written_between_calls():
    """Inference reuses W_hh packed once; writing the flat array in place (an optimizer step) is
    seen by the next call, never the packed copy of the old weights."""
    layer = fastrnn.LSTM(5, 16, 2, rng=0).eval()
    cplan = CPlan(layer, "lstm")
    x = np.random.default_rng(0).standard_normal((6, 2, 5)).astype(np.float32)
    size = ctypes.c_size_t()
    assert lib.fastrnn_plan_packed_bytes(cplan.handle, ctypes.byref(size)) == OK and size.value == 0
    assert cplan.forward(x)[0] == OK
    assert lib.fastrnn_plan_packed_bytes(cplan.handle, ctypes.byref(size)) == OK
    w_hh = layer.params["weight_hh_l1"]
    assert size.value >= 2 * 2 * w_hh.nbytes  # packed panels (padded) and the copy, two layers
    view = cplan.unflatten(cplan.params)
    for step in range(3):
        view["weight_hh_l1"] *= 0.5  # in place, as an optimizer writes
        view["weight_hh_l0"][3, 2] += 0.1  # one element: still seen
        layer.load_state_dict(view)
        status, y, _, _ = cplan.forward(x)
        assert status == OK
        np.testing.assert_allclose(y, layer(x)[0], **TOL[np.float32])
    # a new array through set_params
    fresh = cplan.params * 1.5
    assert lib.fastrnn_plan_set_params(cplan.handle, ptr(fresh), None) == OK
    layer.load_state_dict(cplan.unflatten(fresh))
    np.testing.assert_allclose(cplan.forward(x)[1], layer(x)[0], **TOL[np.float32])


def test_plan_errors():
    layer = fastrnn.LiGRU(4, 6, rng=0)
    cplan = CPlan(layer, "ligru")
    x = np.zeros((3, 2, 4), np.float32)
    handle = cplan.handle

    def create(cell, **fields):
        d = make_desc("lstm", np.float32, 0, 0, 4, 6)
        d.cell = CELLS[cell]
        h = ctypes.c_void_p()
        status = lib.fastrnn_plan_create(ctypes.byref(d), ctypes.byref(plan_options(**fields)), ctypes.byref(h))
        lib.fastrnn_plan_destroy(h)
        return status

    expect_error(create("gru", peephole=1), INVALID, "fastrnn_plan_create: options: peephole: not a variant of gru")
    expect_error(create("lstm", proj_size=6), INVALID, "proj_size must be smaller than hidden_size")
    expect_error(create("lstm", activation=1), INVALID, "Li-GRU settings", "FASTRNN_LSTM")
    expect_error(create("ligru", normalization=7), INVALID, "options->normalization = 7")
    expect_error(create("ligru", recurrent_affine=1), INVALID, "recurrent_elementwise_affine: not a variant of ligru")
    expect_error(create("sligru", bn_momentum=1.5), INVALID, "options->bn_momentum")
    expect_error(lib.fastrnn_plan_create(None, None, ctypes.byref(ctypes.c_void_p())), INVALID, "desc: NULL")

    # the plain functions refuse the Li-GRU cells and point to plans
    d = make_desc("lstm")
    d.cell = CELLS["ligru"]
    expect_error(lib.fastrnn_param_count(ctypes.byref(d), ctypes.byref(ctypes.c_int64())), INVALID,
                 "FASTRNN_LIGRU", "fastrnn_plan_create")

    # parameters
    empty = ctypes.c_void_p()
    d = make_desc("gru", np.float32, 0, 0, 4, 6)
    assert lib.fastrnn_plan_create(ctypes.byref(d), None, ctypes.byref(empty)) == OK, last_error()
    try:
        expect_error(lib.fastrnn_plan_forward(empty, 3, 2, ptr(x), None, None, None, ptr(np.zeros((3, 2, 6), np.float32)),
                                              None, None, None, 0, None), INVALID, "no parameters yet")
        expect_error(lib.fastrnn_plan_set_params(empty, ptr(np.zeros(300, np.float32)), ptr(np.zeros(4, np.float32))),
                     INVALID, "buffers: must be NULL")
    finally:
        lib.fastrnn_plan_destroy(empty)
    expect_error(lib.fastrnn_plan_set_params(handle, ptr(cplan.params), None), INVALID, "buffers: NULL")
    expect_error(lib.fastrnn_plan_tensor_info(handle, 99, ctypes.byref(TensorInfo(struct_size=ctypes.sizeof(TensorInfo)))),
                 INVALID, "index = 99")
    expect_error(lib.fastrnn_plan_param_count(None, None, None), INVALID, "plan: NULL")

    # calls
    status, *_ = cplan.forward(x, call=call_options(candidate_dropout=ptr(np.ones((1, 2, 6), np.float32))))
    expect_error(status, INVALID, "call->candidate_dropout: masks are for training calls")
    status, *_ = cplan.forward(x, call=call_options(zoneout_h=ptr(np.ones((1, 3, 2, 6), np.float32))))
    expect_error(status, INVALID, "call->zoneout_h: not a regularizer of FASTRNN_LIGRU")
    status, *_ = cplan.forward(x, call=call_options(bn_frozen=1))
    expect_error(status, INVALID, "call->bn_frozen: for training calls")
    expect_error(cplan.forward(np.zeros((0, 2, 4), np.float32))[0], INVALID, "seq_len = 0")
    small = np.zeros(16, np.uint8)
    expect_error(cplan.forward(x, cache=small)[0], INVALID, "cache_bytes = 16", "fastrnn_plan_cache_size")

    cache = cplan.cache(3, 2)
    go = np.ones((3, 2, 6), np.float32)
    mask = np.ones((1, 2, 6), np.float32)
    assert cplan.forward(x, cache=cache, call=call_options(candidate_dropout=ptr(mask)))[0] == OK
    expect_error(cplan.backward(x, cache, go)[0], INVALID, "call: differs from the forward's")
    expect_error(cplan.backward(x, cache, go, call=call_options(candidate_dropout=ptr(mask), bn_frozen=1))[0],
                 INVALID, "call: differs")
    other = CPlan(layer, "ligru")
    expect_error(other.backward(x, cache, go, call=call_options(candidate_dropout=ptr(mask)))[0], INVALID,
                 "filled through another plan")
    expect_error(cplan.backward(x, cache, go, lengths=np.array([3, 2], np.int64),
                                call=call_options(candidate_dropout=ptr(mask)))[0], INVALID, "lengths: given")
    masks_opts = options(BackwardOptions, dropout_masks=ptr(mask))
    expect_error(cplan.backward(x, cache, go, call=call_options(candidate_dropout=ptr(mask)), opts=masks_opts)[0],
                 INVALID, "plans take them in call")
    assert cplan.backward(x, cache, go, call=call_options(candidate_dropout=ptr(mask)))[0] == OK, last_error()
    expect_error(cplan.backward(x, cache, go, call=call_options(candidate_dropout=ptr(mask)))[0], INVALID,
                 "consumed by an earlier fastrnn_plan_backward")
    expect_error(cplan.backward(x, np.zeros(4096, np.uint8), go)[0], INVALID, "not filled by a successful")


def test_plan_options_init_and_growth_rule():
    o = plan_options()
    assert (o.activation, o.normalization, o.bn_momentum, o.proj_size) == (0, 1, 0.05, 0)
    expect_error(lib.fastrnn_plan_options_init_(ctypes.byref(o), 8), INVALID, "struct_size = 8")

    class Newer(ctypes.Structure):  # a caller compiled against a newer header, one more field
        _fields_ = PlanOptions._fields_ + [("future", ctypes.c_int64)]

    n = Newer()
    assert lib.fastrnn_plan_options_init_(ctypes.byref(n), ctypes.sizeof(n)) == OK and n.future == 0
    d = make_desc("lstm", np.float32, 0, 0, 4, 6)
    h = ctypes.c_void_p()
    assert lib.fastrnn_plan_create(ctypes.byref(d), ctypes.byref(n), ctypes.byref(h)) == OK, last_error()
    lib.fastrnn_plan_destroy(h)
    n.future = 1
    expect_error(lib.fastrnn_plan_create(ctypes.byref(d), ctypes.byref(n), ctypes.byref(h)), 3, "does not know")


@needs_cc
def test_plan_struct_layouts_match_ctypes_mirror(tmp_path):
    check_struct_layouts(tmp_path, PLAN_STRUCTS)


@pytest.mark.parametrize("compute,name", [(1, "int8"), (2, "bfloat16")])
@pytest.mark.parametrize("cell,make", [("lstm", lambda: fastrnn.LSTM(5, 21, 2, bidirectional=True, rng=0)),
                                       ("gru", lambda: fastrnn.GRU(5, 18, rng=1))])
def test_reduced_plan_matches_the_layer(cell, make, compute, name):
    layer = make().eval()
    plan = CPlan(layer, cell, compute=compute)
    x = np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32)
    status, y, h_n, _ = plan.forward(x)
    assert status == OK, last_error()
    if name == "int8":
        q = layer.quantize_dynamic()
    else:
        q = make().eval()
        q.compute_dtype = "bfloat16"
    np.testing.assert_array_equal(y, q(x)[0])
    assert np.abs(y - layer(x)[0]).max() > 1e-6  # not float32
    if name == "int8":
        expect_error(plan.forward(x, cache=plan.cache(7, 3))[0], INVALID, "computes in int8")
    else:  # bf16 trains too: the forward and BPTT of the layer's bf16 training, bit for bit
        cache = plan.cache(7, 3)
        status, y_train, _, _ = plan.forward(x, cache=cache)
        assert status == OK, last_error()
        go = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        status, gx, _, grads = plan.backward(x, cache, go)
        assert status == OK, last_error()
        q.train()
        want = q(x)[0]
        want_gx = q.backward(go)[0]
        np.testing.assert_array_equal(y_train, want)
        np.testing.assert_array_equal(gx, want_gx)
        for k, g in plan.unflatten(grads).items():
            np.testing.assert_array_equal(g, q.grads[k])
        q.eval()
    # streams of the plan step in its precision
    s = ctypes.c_void_p()
    for name, (args, res) in {"fastrnn_stream_create": ([P, I64, ctypes.c_double, ctypes.c_double, P], ctypes.c_int),
                              "fastrnn_stream_destroy": ([P], None),
                              "fastrnn_stream_step": ([P, I64, P, P, P], ctypes.c_int)}.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = args, res
    if not layer.bidirectional:
        assert lib.fastrnn_stream_create(plan.handle, 3, 0.0, 0.0, ctypes.byref(s)) == OK, last_error()
        out = np.zeros((3, 18), np.float32)
        steps = []
        for t in range(7):
            xt = np.ascontiguousarray(x[t])
            assert lib.fastrnn_stream_step(s, 1, ptr(xt), ptr(out), None) == OK, last_error()
            steps.append(out.copy())
        lib.fastrnn_stream_destroy(s)
        np.testing.assert_array_equal(np.stack(steps), q(x)[0])


def test_int8_plan_options_are_checked():
    layer = fastrnn.LSTM(3, 4, dtype=np.float64)
    d = make_desc("lstm", np.float64, 1, 1, 3, 4, 1, 1, True)
    h = ctypes.c_void_p()
    expect_error(lib.fastrnn_plan_create(ctypes.byref(d), ctypes.byref(plan_options(compute=1)), ctypes.byref(h)),
                 INVALID, "int8 quantizes float32 plans")
    d32 = make_desc("lstm", np.float32, 1, 1, 3, 4, 1, 1, True)
    expect_error(lib.fastrnn_plan_create(ctypes.byref(d32), ctypes.byref(plan_options(compute=3)), ctypes.byref(h)),
                 INVALID, "options->compute = 3, expected a fastrnn_compute (0 to 2)")
    expect_error(lib.fastrnn_plan_create(ctypes.byref(d), ctypes.byref(plan_options(compute=2)), ctypes.byref(h)),
                 INVALID, "bf16 compute takes float32 plans")
    del layer
