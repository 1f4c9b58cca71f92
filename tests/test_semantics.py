"""The contract of docs/design.md ("The contract"): modes, caches, accumulation, no mutation, layouts, NaN."""
import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from util import CELLS, make_layer


@pytest.mark.parametrize("cell", list(CELLS))
def test_user_arrays_never_modified(isa, cell):
    rng = np.random.default_rng(0)
    layer = make_layer(cell, 3, 4, dtype=np.float32, num_layers=2, bidirectional=True, dropout=0.5)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 2, 4)).astype(np.float32)
    c0 = rng.standard_normal((4, 2, 4)).astype(np.float32)
    hx = (h0, c0) if cell == "lstm" else h0
    lengths = np.array([5, 2])
    copies = [a.copy() for a in (x, h0, c0, lengths)]
    out, state = layer(x, hx, lengths)
    g = rng.standard_normal(out.shape).astype(np.float32)
    g_copy = g.copy()
    layer.backward(g)
    for a, b in zip((x, h0, c0, lengths, g), copies + [g_copy]):
        np.testing.assert_array_equal(a, b)


def test_read_only_and_non_contiguous_inputs(isa):
    rng = np.random.default_rng(1)
    layer = fastrnn.GRU(3, 4, rng=0)
    base = rng.standard_normal((5, 2, 6)).astype(np.float32)
    x = base[:, :, ::2]  # non-contiguous view
    assert not x.flags.c_contiguous
    ro = np.ascontiguousarray(x)
    ro.setflags(write=False)
    out1, h1 = layer(x)
    out2, h2 = layer(ro)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(h1, h2)
    gx, _ = layer.backward(np.ones_like(out2))
    assert gx.shape == x.shape


def test_grads_accumulate_and_zero_grad(isa):
    rng = np.random.default_rng(2)
    layer = fastrnn.LSTM(3, 4, rng=0, dtype=np.float64)
    x = rng.standard_normal((6, 2, 3))
    out, _ = layer(x)
    layer.backward(np.ones_like(out))
    once = {k: v.copy() for k, v in layer.grads.items()}
    out, _ = layer(x)
    layer.backward(np.ones_like(out))
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-12, atol=1e-14)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_params_are_live_and_grads_match_keys():
    layer = fastrnn.RNN(3, 4, num_layers=2, bidirectional=True)
    assert list(layer.params) == list(layer.grads)
    x = np.ones((3, 1, 3), np.float32)
    out1, _ = layer(x)
    layer.params["weight_ih_l0"][...] = 0
    out2, _ = layer(x)
    assert not np.array_equal(out1, out2)


def test_new_layer_is_in_train_mode_and_eval_keeps_no_cache():
    layer = fastrnn.GRU(3, 4)
    assert layer.training
    layer(np.ones((3, 1, 3), np.float32))
    assert layer._ctx is not None
    layer.eval()
    layer(np.ones((3, 1, 3), np.float32))
    assert layer._ctx is None


def test_eval_and_train_agree_without_dropout(isa):
    rng = np.random.default_rng(3)
    for cell in CELLS:
        layer = make_layer(cell, 3, 5, dtype=np.float32, num_layers=2, bidirectional=True)
        x = rng.standard_normal((7, 3, 3)).astype(np.float32)
        lengths = [7, 2, 4]
        out_t, st_t = layer(x, lengths=lengths)
        layer.eval()
        out_e, st_e = layer(x, lengths=lengths)
        np.testing.assert_array_equal(out_t, out_e)
        for a, b in zip(np.atleast_1d(st_t) if cell != "lstm" else st_t, np.atleast_1d(st_e) if cell != "lstm" else st_e):
            np.testing.assert_array_equal(a, b)


def test_dropout_train_vs_eval():
    layer = fastrnn.LSTM(3, 8, num_layers=2, dropout=0.5, rng=0)
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    a, _ = layer(x)
    b, _ = layer(x)
    assert not np.array_equal(a, b)  # fresh masks each training forward
    layer.eval()
    c, _ = layer(x)
    d, _ = layer(x)
    np.testing.assert_array_equal(c, d)
    layer.train()
    layer.rng = np.random.default_rng(9)
    e, _ = layer(x)
    layer.rng = np.random.default_rng(9)
    f, _ = layer(x)
    np.testing.assert_array_equal(e, f)  # masks come from the layer's Generator


def test_dropout_mask_statistics():
    layer = fastrnn.RNN(2, 50, num_layers=2, dropout=0.3, rng=0)
    layer(np.ones((40, 10, 2), np.float32))
    m = layer._ctx.masks
    assert m.shape == (1, 40, 10, 50)
    kept = m > 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(m[kept], 1 / 0.7, rtol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_propagates_without_crash(isa, cell):
    layer = make_layer(cell, 3, 4, dtype=np.float32)
    x = np.ones((4, 2, 3), np.float32)
    x[1, 0, 0] = np.nan
    out, _ = layer(x)
    assert np.isnan(out[1:, 0]).all()  # NaN flows through the recurrence
    assert np.isfinite(out[:, 1]).all()  # other sequences are untouched
    gx = layer.backward(np.ones_like(out))[0]
    assert np.isnan(gx[1, 0]).any()
    assert np.isfinite(gx[:, 1]).all()
    x[2, 1, 1] = np.inf  # +-inf pre-activations saturate the gates (as in torch) or give NaN: no crash
    out, _ = layer(x)
    assert out.shape == (4, 2, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_native(dtype):
    layer = fastrnn.LSTM(3, 4, dtype=dtype)
    assert all(p.dtype == dtype for p in layer.params.values())
    out, (h, c) = layer(np.ones((2, 1, 3), dtype))
    assert out.dtype == h.dtype == c.dtype == dtype
    gx, gh, gc = layer.backward(np.ones_like(out))
    assert gx.dtype == gh.dtype == gc.dtype == dtype
    assert all(g.dtype == dtype for g in layer.grads.values())


def test_backward_returns_initial_state_grads_without_hx():
    layer = fastrnn.LSTM(3, 4, num_layers=2)
    out, _ = layer(np.ones((3, 2, 3), np.float32))
    gx, gh0, gc0 = layer.backward(np.ones_like(out))
    assert gh0.shape == gc0.shape == (2, 2, 4)
    assert np.abs(gh0).sum() > 0


def test_padded_output_grads_are_ignored():
    rng = np.random.default_rng(5)
    layer = fastrnn.GRU(3, 4, bidirectional=True, dtype=np.float64)
    x = rng.standard_normal((6, 2, 3))
    lengths = [3, 6]
    out, _ = layer(x, lengths=lengths)
    g = rng.standard_normal(out.shape)
    r1 = layer.backward(g)
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    g[3:, 0] = 1e6  # gradient at padded positions
    layer(x, lengths=lengths)
    r2 = layer.backward(g)
    np.testing.assert_array_equal(r1[0], r2[0])
    for k in g1:
        np.testing.assert_array_equal(g1[k], layer.grads[k])
    assert not r1[0][3:, 0].any()  # no gradient reaches padded inputs


def test_h_n_is_state_at_last_valid_step():
    rng = np.random.default_rng(6)
    layer = fastrnn.LSTM(3, 4, dtype=np.float64)
    x = rng.standard_normal((6, 2, 3))
    out, (h, c) = layer(x, lengths=[3, 6])
    short, (hs, cs) = layer(x[:3, :1])
    np.testing.assert_allclose(h[:, 0], hs[:, 0], rtol=1e-13)
    np.testing.assert_allclose(c[:, 0], cs[:, 0], rtol=1e-13)
    np.testing.assert_allclose(out[:3, 0], short[:, 0], rtol=1e-13)


def test_reverse_direction_starts_at_each_sequence_end():
    rng = np.random.default_rng(7)
    layer = fastrnn.GRU(3, 4, bidirectional=True, dtype=np.float64)
    x = rng.standard_normal((6, 2, 3))
    out, h = layer(x, lengths=[4, 6])
    alone, h_alone = layer(x[:4, :1])
    np.testing.assert_allclose(out[:4, 0], alone[:, 0], rtol=1e-13)
    np.testing.assert_allclose(h[:, 0], h_alone[:, 0], rtol=1e-13)


def test_lengths_accept_any_integer_array_like():
    layer = fastrnn.RNN(3, 4)
    x = np.ones((5, 3, 3), np.float32)
    a, _ = layer(x, lengths=[5, 1, 3])
    b, _ = layer(x, lengths=np.array([5, 1, 3], np.int32))
    np.testing.assert_array_equal(a, b)


def test_deterministic_run_to_run(isa):
    rng = np.random.default_rng(8)
    layer = fastrnn.LSTM(16, 32, num_layers=2, bidirectional=True)
    x = rng.standard_normal((20, 8, 16)).astype(np.float32)
    outs = []
    for _ in range(3):
        out, _ = layer(x)
        gx, _, _ = layer.backward(np.ones_like(out))
        outs.append((out, gx))
    for out, gx in outs[1:]:
        np.testing.assert_array_equal(out, outs[0][0])
        np.testing.assert_array_equal(gx, outs[0][1])


def test_reset_parameters_is_torch_default_and_seeded():
    a = fastrnn.GRU(3, 16, rng=5)
    b = fastrnn.GRU(3, 16, rng=5)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        assert np.abs(a.params[k]).max() <= 1 / 4
    a.reset_parameters(rng=1)
    assert not np.array_equal(a.params["weight_hh_l0"], b.params["weight_hh_l0"])


def test_functional_backward_into_new_dict_and_repr():
    layer = fastrnn.RNN(3, 4, nonlinearity="relu", bidirectional=True)
    out, h, ctx = F.rnn_forward(np.ones((2, 1, 3), np.float32), layer.params, bidirectional=True,
                                nonlinearity="relu", training=True)
    gx, gh0, gc0, grads = F.backward(ctx, np.ones_like(out))
    assert gc0 is None and set(grads) == set(layer.params)
    assert "nonlinearity='relu'" in repr(layer) and "bidirectional=True" in repr(layer)
    _, _, ctx = F.rnn_forward(np.ones((2, 1, 3), np.float32), layer.params, bidirectional=True)
    assert ctx is None


@pytest.mark.parametrize("cell", list(CELLS))
def test_functional_backward_retain_keeps_cache(isa, cell):
    rng = np.random.default_rng(10)
    layer = make_layer(cell, 3, 9, dtype=np.float64, num_layers=2, bidirectional=True)
    x = rng.standard_normal((6, 3, 3))
    kind = "lstm" if cell == "lstm" else ("gru" if cell.startswith("gru") else "rnn")
    kw = dict(num_layers=2, bidirectional=True, training=True)
    if kind == "lstm":
        out, _, ctx = F.lstm_forward(x, layer.params, lengths=[6, 2, 4], **kw)
    elif kind == "gru":
        out, _, ctx = F.gru_forward(x, layer.params, lengths=[6, 2, 4], reset_after=layer.reset_after, **kw)
    else:
        out, _, ctx = F.rnn_forward(x, layer.params, lengths=[6, 2, 4], nonlinearity=layer.nonlinearity, **kw)
    g = rng.standard_normal(out.shape)
    first = F.backward(ctx, g, retain=True)
    second = F.backward(ctx, g, retain=True)
    third = F.backward(ctx, g)
    for a, b, c in zip(first[:2], second[:2], third[:2]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for k in first[3]:
        np.testing.assert_array_equal(first[3][k], third[3][k])
    with pytest.raises(RuntimeError, match="already used"):
        F.backward(ctx, g)


@pytest.mark.parametrize("cell", list(CELLS))
def test_results_do_not_depend_on_thread_count(isa, cell):
    # Each output element is computed by one thread with the same arithmetic whatever the
    # partition, so 1, 2 and 3 threads agree bitwise (sizes large enough to split the units).
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 16, 24)).astype(np.float32)
    lengths = rng.integers(1, 10, 16)
    results = []
    previous = fastrnn.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastrnn.set_num_threads(threads)
            layer = make_layer(cell, 24, 80, dtype=np.float32, seed=3, num_layers=2, bidirectional=True)
            out, _ = layer(x, lengths=lengths)
            grads = layer.backward(np.cos(out))
            results.append((out, grads[0], grads[1], dict(layer.grads)))
    finally:
        fastrnn.set_num_threads(previous)
    for out, gx, gh0, grads in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(gx, results[0][1])
        np.testing.assert_array_equal(gh0, results[0][2])
        for k in grads:
            np.testing.assert_array_equal(grads[k], results[0][3][k])
