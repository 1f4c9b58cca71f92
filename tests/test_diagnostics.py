"""fastrnn.diagnostics: per-step BPTT norms, saturation, spectra, non-finite location, verdicts,
BPTT clipping, reports, Monitor and gradcheck."""
import json
import math

import numpy as np
import pytest

import fastrnn
from fastrnn.core import reference as ref
from fastrnn import diagnostics as dg
from util import CELLS, make_layer, ref_kwargs, to_time_major


def _recorded(layer, x, hx=None, lengths=None, g_out=None, g_h=None, g_c=None, rng_dropout=None):
    if rng_dropout is not None:
        layer.rng = np.random.default_rng(rng_dropout)
    with dg.record(layer) as rec:
        out, state = layer(x, hx, lengths)
        args = [g_out if g_out is not None else np.ones_like(out)]
        if g_h is not None:
            args.append(g_h)
            if g_c is not None:
                args.append(g_c)
        layer.backward(*args)
    return rec.report(), layer._ctx


def _reference_norms(layer, x, hx, lengths, g_out, g_h, g_c, masks, bptt_clip=None):
    kind, kw = ref_kwargs(layer)
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    params = {k: f64(v) for k, v in layer.params.items()}
    rmasks = None if masks is None else [f64(m) for m in masks]
    xt = to_time_major(f64(x), layer.batch_first, False)
    o, hn, cn, cache = ref.forward(kind, xt, params, hx, lengths, dropout_masks=rmasks, **kw)
    ref.backward(cache, to_time_major(f64(g_out), layer.batch_first, False), f64(g_h), f64(g_c), bptt_clip=bptt_clip)
    L, D = layer.num_layers, layer.num_directions
    gh = np.array([[np.linalg.norm(cache["grad_h"][l][d], axis=(1, 2)) for d in range(D)] for l in range(L)])
    gc = None
    if cache["grad_c"] is not None:
        gc = np.array([[np.linalg.norm(cache["grad_c"][l][d], axis=(1, 2)) for d in range(D)] for l in range(L)])
    return gh, gc, cache


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", ["plain", "deep_bi_lengths", "dropout_batch_first"])
def test_per_step_norms_equal_reference(isa, cell, dtype, config):
    rng = np.random.default_rng(3)
    T, N, C, H = 11, 4, 3, 9
    kw = {"plain": {}, "deep_bi_lengths": dict(num_layers=2, bidirectional=True),
          "dropout_batch_first": dict(num_layers=3, dropout=0.3, batch_first=True)}[config]
    lengths = [11, 4, 7, 1] if config == "deep_bi_lengths" else None
    layer = make_layer(cell, C, H, dtype=dtype, seed=5, **kw)
    x = rng.standard_normal((N, T, C) if layer.batch_first else (T, N, C)).astype(dtype)
    S = layer.num_layers * layer.num_directions
    g_out = rng.standard_normal((N, T, layer.num_directions * H) if layer.batch_first
                                else (T, N, layer.num_directions * H)).astype(dtype)
    g_h = rng.standard_normal((S, N, H)).astype(dtype)
    g_c = rng.standard_normal((S, N, H)).astype(dtype) if cell == "lstm" else None
    report, ctx = _recorded(layer, x, None, lengths, g_out, g_h, g_c, rng_dropout=2)
    gh, gc, cache = _reference_norms(layer, x, None, lengths, g_out, g_h, g_c, ctx.masks)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(report.grad_h_norm, gh, rtol=tol, atol=tol * max(1, gh.max()))
    np.testing.assert_allclose(report.propagation, cache["propagation"], rtol=100 * tol, atol=100 * tol)
    assert np.isnan(report.propagation[:, 0, -1]).all()  # no step before the first BPTT step
    if cell == "lstm":
        np.testing.assert_allclose(report.grad_c_norm, gc, rtol=tol, atol=tol * max(1, gc.max()))
    else:
        assert report.grad_c_norm is None
    if lengths is not None:  # steps where every row is padded have no gradient
        assert report.grad_h_norm.shape == (2, 2, T)


def test_per_step_norms_equal_torch_lstmcell_loop():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    T, N, C, H = 12, 3, 4, 6
    cell = torch.nn.LSTMCell(C, H, dtype=torch.float64)
    layer = fastrnn.LSTM(C, H, dtype=np.float64)
    layer.load_state_dict({k.replace("weight_ih", "weight_ih_l0").replace("weight_hh", "weight_hh_l0")
                           .replace("bias_ih", "bias_ih_l0").replace("bias_hh", "bias_hh_l0"): v
                           for k, v in cell.state_dict().items()})
    x = torch.randn(T, N, C, dtype=torch.float64)
    w = torch.randn(T, N, H, dtype=torch.float64)
    h = torch.zeros(N, H, dtype=torch.float64)
    c = torch.zeros(N, H, dtype=torch.float64)
    hs, cs = [], []
    for t in range(T):
        h, c = cell(x[t], (h, c))
        h.retain_grad()
        c.retain_grad()
        hs.append(h)
        cs.append(c)
    sum((hh * w[t]).sum() for t, hh in enumerate(hs)).backward()
    torch_h = np.array([hh.grad.norm().item() for hh in hs])
    torch_c = np.array([cc.grad.norm().item() for cc in cs])
    report, _ = _recorded(layer, x.numpy(), g_out=w.numpy())
    np.testing.assert_allclose(report.grad_h_norm[0, 0], torch_h, rtol=1e-10)
    # torch's c_t.grad excludes the h_t = o*tanh(c_t) path of step t itself only through autograd's
    # own accumulation: it is the total dL/dc_t as well.
    np.testing.assert_allclose(report.grad_c_norm[0, 0], torch_c, rtol=1e-10)


def test_verdict_vanishing_tanh_rnn_radius_half():
    rnn = fastrnn.RNN(4, 32, dtype=np.float64, rng=0)
    w = fastrnn.init.orthogonal((32, 32), rng=1, dtype=np.float64)
    rnn.params["weight_hh_l0"][...] = 0.5 * w  # spectral radius 0.5
    x = np.random.default_rng(2).standard_normal((100, 8, 4))
    out, _ = rnn(x)
    g = np.zeros_like(out)
    g[-1] = 1.0
    with dg.record(rnn) as rec:
        rnn(x)
        rnn.backward(g)
    r = rec.report()
    assert r.verdict == "vanishing"
    assert r.spectral_radius[0, 0] == pytest.approx(0.5, rel=1e-6)
    assert r.change_decades[0, 0] < -20


def test_verdict_exploding_relu_rnn_identity():
    rnn = fastrnn.RNN(4, 16, nonlinearity="relu", dtype=np.float64, rng=0)
    fastrnn.init.identity_(rnn, scale=1.5)
    x = np.abs(np.random.default_rng(3).standard_normal((60, 4, 4)))
    rnn.params["weight_ih_l0"][...] = np.abs(rnn.params["weight_ih_l0"])
    with dg.record(rnn) as rec:
        out, _ = rnn(x)
        g = np.zeros_like(out)
        g[-1] = 1.0
        rnn.backward(g)
    r = rec.report()
    assert r.verdict == "exploding"
    assert r.spectral_radius[0, 0] == pytest.approx(1.5, rel=1e-6)
    assert r.change_decades[0, 0] > 5


def test_verdict_healthy_lstm_forget_bias_adding():
    lstm = fastrnn.LSTM(2, 32, dtype=np.float64, rng=0)
    fastrnn.init.forget_bias_(lstm, 1.0)
    x, y = fastrnn.tasks.adding(T=20, N=32, rng=0, dtype=np.float64)[:2]
    with dg.record(lstm) as rec:
        out, _ = lstm(x)
        g = np.zeros_like(out)
        g[-1] = 1.0
        lstm.backward(g)
    assert rec.report().verdict == "healthy"
    # without the forget bias the same LSTM's gradient decays more than 1000x over the sequence
    plain = fastrnn.LSTM(2, 32, dtype=np.float64, rng=0)
    with dg.record(plain) as rec:
        out, _ = plain(x)
        plain.backward(g)
    assert rec.report().verdict == "vanishing"


@pytest.mark.parametrize("cell", list(CELLS))
def test_saturation_matches_numpy(isa, cell):
    rng = np.random.default_rng(4)
    layer = make_layer(cell, 3, 8, dtype=np.float64, seed=6, num_layers=2, bidirectional=True)
    for w in layer.params.values():
        w *= 4.0  # push gates into saturation
    x = rng.standard_normal((7, 5, 3)) * 3
    lengths = [7, 3, 5, 7, 1]
    report, _ = _recorded(layer, x, lengths=lengths)
    kind, kw = ref_kwargs(layer)
    _, _, _, cache = ref.forward(kind, x, dict(layer.params), None, lengths, **kw)
    names = dg.GATE_NAMES[cell if not cell.startswith("gru") else "gru"]
    assert list(report.saturation) == list(names)
    for l in range(2):
        for d in range(2):
            steps = dict(cache["layers"][l]["dirs"][d]["steps"])
            for t in range(7):
                s = steps[t]
                valid = s["valid"][:, 0]
                vals = ([s["i"], s["f"], s["g"], s["o"]] if kind == "lstm"
                        else [s["r"], s["z"], s["n"]] if kind == "gru" else [s["out"]])
                for gname, v, kind_of in zip(names, vals, _kinds(cell)):
                    v = v[valid]
                    if kind_of == "sigmoid":
                        want = np.mean((v < 0.01) | (v > 0.99))
                    elif kind_of == "tanh":
                        want = np.mean(np.abs(v) > 0.99)
                    else:
                        want = np.mean(v == 0)
                    assert report.saturation[gname][l, d, t] == pytest.approx(want, abs=1e-12)


def _kinds(cell):
    return {"lstm": ["sigmoid", "sigmoid", "tanh", "sigmoid"], "gru": ["sigmoid", "sigmoid", "tanh"],
            "gru_v1": ["sigmoid", "sigmoid", "tanh"], "rnn_tanh": ["tanh"], "rnn_relu": ["dead"]}[cell]


def test_saturation_is_nan_for_all_padded_steps():
    layer = fastrnn.GRU(2, 4, rng=0)
    report, _ = _recorded(layer, np.ones((6, 2, 2), np.float32), lengths=[3, 2])
    assert np.isnan(report.saturation["reset"][0, 0, 3:]).all()
    assert np.isfinite(report.saturation["reset"][0, 0, :3]).all()
    assert not report.grad_h_norm[0, 0, 3:].any()


def test_first_nonfinite_input_state_and_gradient():
    layer = fastrnn.LSTM(3, 5, num_layers=2, dtype=np.float64, rng=0)
    x = np.ones((8, 2, 3))
    x[4, 1, 2] = np.nan
    report, _ = _recorded(layer, x)
    assert report.first_nonfinite == dict(layer=0, direction=0, step=4, quantity="input")
    assert report.verdict == "exploding"  # NaN gradients follow

    relu = fastrnn.RNN(2, 3, nonlinearity="relu", dtype=np.float64, rng=0)
    relu.params["weight_hh_l0"][...] = 1e200 * np.eye(3)
    relu.params["weight_ih_l0"][...] = 1.0
    relu.params["bias_ih_l0"][...] = 1.0
    report, _ = _recorded(relu, np.ones((6, 1, 2)))
    f = report.first_nonfinite
    assert (f["quantity"], f["layer"]) == ("hidden state", 0) and f["step"] == 2  # 1e200^2 overflows

    gru = fastrnn.GRU(2, 3, bidirectional=True, dtype=np.float64, rng=0)
    g = np.zeros((6, 2, 6))
    g[2, 0, 1] = np.inf  # a non-finite gradient enters the forward direction at t = 2
    report, _ = _recorded(gru, np.ones((6, 2, 2)), g_out=g)
    assert report.first_nonfinite == dict(layer=0, direction=0, step=2, quantity="gradient")
    assert report.verdict == "exploding"


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_bptt_clip_matches_reference(isa, cell, dtype):
    rng = np.random.default_rng(5)
    layer = make_layer(cell, 3, 9, dtype=dtype, seed=1, num_layers=2, bidirectional=True, bptt_clip=0.05)
    x = rng.standard_normal((10, 3, 3)).astype(dtype)
    g_out = (5 * rng.standard_normal((10, 3, 18))).astype(dtype)
    lengths = [10, 6, 2]
    report, _ = _recorded(layer, x, lengths=lengths, g_out=g_out)
    gx = layer._last_grad_x if hasattr(layer, "_last_grad_x") else None
    del gx
    kind, kw = ref_kwargs(layer)
    params = {k: np.asarray(v, np.float64) for k, v in layer.params.items()}
    _, _, _, cache = ref.forward(kind, x.astype(np.float64), params, None, lengths, **kw)
    rgx, _, _, rgrads = ref.backward(cache, g_out.astype(np.float64), bptt_clip=0.05)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    for name, g in rgrads.items():
        err = np.max(np.abs(layer.grads[name] - g)) / max(1.0, np.max(np.abs(g)))
        assert err <= tol, name
    # the clipped run differs from the unclipped one (the clip is active)
    _, _, _, plain = ref.backward(ref.forward(kind, x.astype(np.float64), params, None, lengths, **kw)[3],
                                  g_out.astype(np.float64))
    assert max(np.max(np.abs(plain[k] - rgrads[k])) for k in rgrads) > 1e-3


def test_bptt_clip_bounds_the_gate_gradients():
    # An exploding ReLU RNN: without clipping the per-step gradient grows geometrically; with it,
    # every pre-activation gradient is in [-c, c], so |dL/dh_{t-1}| <= c * ||W_hh||_2 * sqrt(N*H).
    def run(clip):
        rnn = fastrnn.RNN(2, 8, nonlinearity="relu", dtype=np.float64, rng=0, bptt_clip=clip)
        fastrnn.init.identity_(rnn, scale=1.3)
        rnn.params["weight_ih_l0"][...] = 0.5
        x = np.ones((40, 2, 2))
        g = np.zeros((40, 2, 8))
        g[-1] = 1.0
        report, _ = _recorded(rnn, x, g_out=g)
        return report
    free, clipped = run(None), run(0.01)
    assert free.grad_h_norm[0, 0, 0] > 1e3 * free.grad_h_norm[0, 0, -1]
    bound = 0.01 * 1.3 * math.sqrt(2 * 8)
    assert clipped.grad_h_norm[0, 0, :-1].max() <= bound * (1 + 1e-12)


def test_bptt_clip_validation():
    with pytest.raises(ValueError, match="bptt_clip must be a positive"):
        fastrnn.LSTM(2, 3, bptt_clip=-1.0)
    with pytest.raises(TypeError, match="bptt_clip"):
        fastrnn.LSTM(2, 3, bptt_clip="big")
    assert "bptt_clip=0.5" in repr(fastrnn.GRU(2, 3, bptt_clip=0.5))


def test_spectra_equal_numpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = rng.standard_normal((12, 12)) / 3
        assert dg.spectral_radius(w, iters=2000) == pytest.approx(np.abs(np.linalg.eigvals(w)).max(), rel=2e-3)
        w2 = rng.standard_normal((20, 7))
        assert dg.largest_singular_value(w2, iters=500) == pytest.approx(np.linalg.norm(w2, 2), rel=1e-8)
    lstm = fastrnn.LSTM(3, 6, dtype=np.float64, rng=1)
    report, _ = _recorded(lstm, np.ones((3, 1, 3)))
    w = lstm.params["weight_hh_l0"]
    for g in range(4):
        exact = np.abs(np.linalg.eigvals(w[g * 6:(g + 1) * 6])).max()
        assert report.spectral_radius_gates[0, 0, g] == pytest.approx(exact, rel=2e-2)
    assert report.singular_value[0, 0] == pytest.approx(np.linalg.norm(w, 2), rel=1e-6)
    with pytest.raises(ValueError, match="square"):
        dg.spectral_radius(np.ones((2, 3)))


def test_report_outputs(tmp_path):
    layer = fastrnn.LSTM(2, 6, num_layers=2, bidirectional=True, rng=0)
    report, _ = _recorded(layer, np.random.default_rng(0).standard_normal((9, 3, 2)).astype(np.float32))
    d = report.to_dict()
    assert d["verdict"] == report.verdict and len(d["grad_h_norm"]) == 2
    parsed = json.loads(report.to_json())
    assert parsed["cell"] == "lstm" and set(parsed["saturation"]) == {"input", "forget", "cell", "output"}
    text = report.summary()
    assert "verdict" in text and text.count("\n") >= 5
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    path = tmp_path / "flow.png"
    fig = report.plot(path)
    assert path.stat().st_size > 5000
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_record_errors_and_nothing_recorded_when_off():
    with pytest.raises(TypeError, match="expected a fastrnn layer"):
        dg.record(object())
    layer = fastrnn.GRU(2, 3)
    with dg.record(layer) as rec:
        with pytest.raises(RuntimeError, match="no backward was recorded"):
            rec.report()
        with pytest.raises(RuntimeError, match="already attached"):
            rec.__enter__()
        with dg.record(layer) as second:  # two recorders on one layer: both get the reports
            out, _ = layer(np.ones((2, 1, 2), np.float32))
            layer.backward(np.ones_like(out))
        assert len(second.reports) == 1 and len(rec.reports) == 1
        np.testing.assert_array_equal(second.report().grad_h_norm, rec.report().grad_h_norm)
        rec.active = False
        out, _ = layer(np.ones((2, 1, 2), np.float32))
        layer.backward(np.ones_like(out))
        assert len(rec.reports) == 1 and layer._ctx.grad_h_norm is None  # paused: nothing recorded
    out, _ = layer(np.ones((2, 1, 2), np.float32))
    ctx = layer._ctx
    layer.backward(np.ones_like(out))
    assert ctx.grad_h_norm is None and layer._recorders == ()
    seq = fastrnn.Sequential(fastrnn.Linear(2, 2), fastrnn.LSTM(2, 3), fastrnn.LastStep(), fastrnn.Linear(3, 1))
    assert dg.record(seq).layer is seq[1]  # a container's one recurrent layer, wherever it sits


def test_record_fastrnn_torch_module():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    m = ft.LSTM(3, 5, num_layers=2, dtype=torch.float64)
    ref_layer = fastrnn.LSTM(3, 5, num_layers=2, dtype=np.float64)
    ref_layer.load_state_dict(m.state_dict())
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    with dg.record(torch.nn.Sequential(m)) as rec:
        out, _ = m(x)
        out.sum().backward()
    report, _ = _recorded(ref_layer, x.numpy())
    np.testing.assert_allclose(rec.report().grad_h_norm, report.grad_h_norm, rtol=1e-12)
    for g in report.saturation:
        np.testing.assert_array_equal(rec.report().saturation[g], report.saturation[g])
    m.bptt_clip = 1e-3
    m.zero_grad()
    m(x)[0].sum().backward()
    ref_layer.bptt_clip = 1e-3
    ref_layer.zero_grad()
    out, _ = ref_layer(x.numpy())
    ref_layer.backward(np.ones_like(out))
    np.testing.assert_allclose(m.weight_hh_l0.grad.numpy(), ref_layer.grads["weight_hh_l0"], rtol=1e-10)


def test_monitor_with_fit_and_plot(tmp_path):
    model = fastrnn.Sequential(fastrnn.RNN(1, 8, rng=0), fastrnn.Linear(8, 1, rng=0))
    x, y = fastrnn.tasks.sine(T=15, N=4, rng=0)
    mon = dg.Monitor(max_norm=1e-3, every=2)
    fastrnn.fit(model, [(x, y)] * 3, fastrnn.losses.mse, fastrnn.optim.Adam(model), epochs=2, callbacks=[mon],
                verbose=False)
    assert mon.records["step"] == [0, 2, 4]
    assert mon.clipped_fraction == 1.0  # every gradient norm exceeded 1e-3
    assert all(v in ("healthy", "vanishing", "exploding") for v in mon.records["verdict"])
    assert model.modules[0]._recorders == ()
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.close(mon.plot(tmp_path / "m.png"))
    assert (tmp_path / "m.png").stat().st_size > 5000


def test_gradcheck_passes_and_names_a_wrong_gradient():
    lstm = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    h0 = np.random.default_rng(1).standard_normal((4, 2, 4))
    res = fastrnn.gradcheck(lstm, (x, (h0, h0.copy())))
    assert res.passed and res.max_abs_error < 1e-6 and "passed" in str(res)
    assert fastrnn.gradcheck(fastrnn.Sequential(fastrnn.GRU(3, 4, dtype=np.float64, rng=0), fastrnn.LastStep(),
                                                fastrnn.Linear(4, 2, dtype=np.float64, rng=0)), x)

    def bad(a, b):  # d/db is wrong by a factor 2
        return float(np.sum(a * b ** 2)), (b ** 2, 4 * a * b)
    res = fastrnn.gradcheck(bad, (np.ones(3), np.arange(3.0) + 1))
    assert not res.passed and res.worst["name"] == "input 1"
    with pytest.raises(TypeError, match="float64"):
        fastrnn.gradcheck(fastrnn.GRU(2, 2), np.ones((2, 1, 2), np.float32))


def test_terminate_on_nan_says_where_inside_the_recurrence():
    # ReLU RNN with a huge identity recurrence: the forward state overflows to inf at a known step.
    layer = fastrnn.RNN(2, 4, nonlinearity="relu", dtype=np.float32, rng=0)
    fastrnn.init.identity_(layer, scale=1e10)
    layer.params["weight_ih_l0"][...] = 1.0
    model = fastrnn.Sequential(layer, fastrnn.LastStep(), fastrnn.Linear(4, 1, rng=0))
    x, y = fastrnn.tasks.adding(T=12, N=3, rng=0)
    stop = fastrnn.callbacks.TerminateOnNaN()
    hist = fastrnn.fit(model, [(x, y)], fastrnn.losses.mse, fastrnn.optim.SGD(model, lr=0.1), epochs=2,
                       callbacks=[stop], verbose=False, clip=1.0)
    assert stop.step == 0 and stop.location["quantity"] == "hidden state"
    assert stop.location["step"] == 4  # |h| ~ 1e10^t overflows float32 (3.4e38) at t = 4
    assert "time step 4" in hist.stop_reason
    assert layer._recorders == ()  # its own recorder is detached after training
    assert fastrnn.diagnostics.record(layer, keep="last").keep == "last"
    with pytest.raises(ValueError, match="keep must be"):
        fastrnn.diagnostics.record(layer, keep="first")


@pytest.mark.parametrize("cell", list(CELLS))
def test_propagation_factors_telescope_without_injection(cell):
    # Loss on the last step only: every earlier step's gradient came through the recurrence, so the
    # per-step factors multiply to the ratio of the state gradients at the two ends.
    layer = make_layer(cell, 3, 8, dtype=np.float64, seed=2)
    x = np.random.default_rng(0).standard_normal((15, 4, 3))
    g = np.zeros((15, 4, 8))
    g[-1] = np.random.default_rng(1).standard_normal((4, 8))
    report, ctx = _recorded(layer, x, g_out=g)
    prod = np.prod(report.propagation[0, 0, :-1])
    # the state gradient at the two ends: dL/dh_t, plus for LSTM the dL/dc_0 arriving from step 1
    first = report.grad_h_norm[0, 0, 0] ** 2
    if cell == "lstm":
        kind, kw = ref_kwargs(layer)
        _, _, _, cache = ref.forward(kind, x, dict(layer.params), **kw)
        ref.backward(cache, g)
        f1 = dict(cache["layers"][0]["dirs"][0]["steps"])[1]["f"]
        first += np.sum((cache["grad_c"][0][0][1] * f1) ** 2)
    assert prod == pytest.approx(np.sqrt(first) / report.grad_h_norm[0, 0, -1], rel=1e-9)
