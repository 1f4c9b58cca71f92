"""fastrnn.optim: a plain NumPy reference of each update rule, torch.optim as oracle, checkpoints,
the one-C++-call hot path, schedules and bad input."""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import optim

DTYPES = [np.float32, np.float64]
SHAPES = [(7, 5), (13,), (1,), (2, 3, 4)]

# (class name, kwargs accepted by both fastrnn and torch)
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.05)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CONFIGS]


def reference(name, kw, params, grads_per_step, l1=0.0):
    """float64 NumPy implementation of the documented formulas; returns the parameters after each step."""
    lr = kw.get("lr")
    wd = kw.get("weight_decay", 1e-2 if name == "AdamW" else 0.0)
    ps = [p.astype(np.float64) for p in params]
    state = [dict() for _ in ps]
    out = []
    for t, grads in enumerate(grads_per_step, 1):
        for p, g0, st in zip(ps, grads, state):
            g = g0.astype(np.float64) + l1 * np.sign(p)
            if name == "AdamW":
                p *= 1 - lr * wd
            else:
                g = g + wd * p
            if name == "SGD":
                mom, damp = kw.get("momentum", 0.0), kw.get("dampening", 0.0)
                if mom:
                    st["b"] = g.copy() if t == 1 else mom * st["b"] + (1 - damp) * g
                    g = g + mom * st["b"] if kw.get("nesterov") else st["b"]
                p -= lr * g
            elif name in ("Adam", "AdamW"):
                b1, b2 = kw.get("betas", (0.9, 0.999))
                eps = kw.get("eps", 1e-8)
                st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
                st["v"] = b2 * st.get("v", 0) + (1 - b2) * g * g
                v = st["v"]
                if kw.get("amsgrad"):
                    st["vmax"] = v = np.maximum(st.get("vmax", 0), v)
                p -= lr / (1 - b1**t) * st["m"] / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps)
            elif name == "RMSprop":
                a, eps, mom = kw.get("alpha", 0.99), kw.get("eps", 1e-8), kw.get("momentum", 0.0)
                st["s"] = a * st.get("s", 0) + (1 - a) * g * g
                avg = st["s"]
                if kw.get("centered"):
                    st["ga"] = a * st.get("ga", 0) + (1 - a) * g
                    avg = avg - st["ga"] ** 2
                avg = np.sqrt(avg) + eps
                if mom:
                    st["b"] = mom * st.get("b", 0) + g / avg
                    p -= lr * st["b"]
                else:
                    p -= lr * g / avg
            elif name == "Adagrad":
                eps = kw.get("eps", 1e-10)
                st["s"] = st.get("s", kw.get("initial_accumulator_value", 0.0)) + g * g
                p -= lr / (1 + (t - 1) * kw.get("lr_decay", 0.0)) * g / (np.sqrt(st["s"]) + eps)
        out.append([p.copy() for p in ps])
    return out


def problem(dtype, steps, seed=0):
    r = np.random.default_rng(seed)
    params = [r.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[r.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return params, grads


def run(name, kw, params, grads_per_step, **extra):
    ps = [p.copy() for p in params]
    gs = [np.zeros_like(p) for p in ps]
    opt = getattr(optim, name)(list(zip(ps, gs)), **kw, **extra)
    out = []
    for grads in grads_per_step:
        for g, new in zip(gs, grads):
            g[...] = new
        opt.step()
        out.append([p.copy() for p in ps])
    return out, opt


TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_numpy_reference(name, kw, dtype):
    params, grads = problem(dtype, steps=6)
    mine, _ = run(name, kw, params, grads)
    ref = reference(name, kw, params, grads)
    for step, (a, b) in enumerate(zip(mine, ref)):
        for i, (p, q) in enumerate(zip(a, b)):
            assert p.dtype == dtype
            np.testing.assert_allclose(p, q, **TOL[dtype], err_msg=f"step {step}, tensor {i}")


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_optim(name, kw, dtype):
    torch = pytest.importorskip("torch")
    params, grads = problem(dtype, steps=8, seed=1)
    mine, _ = run(name, kw, params, grads)
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tp, **kw)
    for step, gs in enumerate(grads):
        for t, g in zip(tp, gs):
            t.grad = torch.tensor(g)
        topt.step()
        for i, (p, t) in enumerate(zip(mine[step], tp)):
            # a few ulps: torch's vectorised kernels fuse some multiply-adds
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=4e-6 if dtype == np.float32 else 1e-14,
                                       atol=1e-6 if dtype == np.float32 else 1e-15, err_msg=f"step {step}, tensor {i}")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_regularization(name, dtype):
    kw = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    params, grads = problem(dtype, steps=4, seed=2)
    params[1][:3] = 0  # sign(0) = 0: no L1 push on exact zeros
    mine, _ = run(name, kw, params, grads, l1=0.3)
    ref = reference(name, kw, params, grads, l1=0.3)
    for a, b in zip(mine, ref):
        for p, q in zip(a, b):
            np.testing.assert_allclose(p, q, **TOL[dtype])


def test_l1_and_l2_first_step_analytic():
    w = np.array([2.0, -1.0, 0.0]); g = np.array([0.5, 0.5, 0.5])
    optim.SGD([(w, g)], lr=0.1, weight_decay=0.2, l1=1.0).step()
    np.testing.assert_allclose(w, [2 - 0.1 * (0.5 + 0.4 + 1), -1 - 0.1 * (0.5 - 0.2 - 1), 0 - 0.1 * 0.5])


def test_adam_first_step_moves_by_lr():
    w = np.zeros(4); g = np.array([1e-3, -5.0, 2.0, 0.0])
    optim.Adam([(w, g)], lr=0.1, eps=0.0 + 1e-12).step()
    np.testing.assert_allclose(w, [-0.1, 0.1, -0.1, 0.0], rtol=1e-6)


def test_step_leaves_gradients_untouched_and_mixed_dtypes():
    p32, p64 = np.ones(5, np.float32), np.ones(3)
    g32, g64 = np.full(5, 0.5, np.float32), np.full(3, 0.5)
    g32_0, g64_0 = g32.copy(), g64.copy()
    opt = optim.Adam({"a": (p32, g32), "b": (p64, g64)}, lr=0.1, weight_decay=0.5, l1=0.1)
    opt.step()
    np.testing.assert_array_equal(g32, g32_0)
    np.testing.assert_array_equal(g64, g64_0)
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    np.testing.assert_allclose(p32, 0.9, rtol=1e-6)  # first Adam step: lr·g/(|g| + eps) ≈ lr
    np.testing.assert_allclose(p64, 0.9 + 0.1 * 1e-8 / 1.1, rtol=1e-14)
    assert opt.names == ["a", "b"] and opt.step_count == 1


def test_one_cpp_call_per_step(monkeypatch):
    model = fastrnn.Sequential(fastrnn.LSTM(3, 4, num_layers=2, rng=0), fastrnn.Linear(4, 2, rng=0))
    calls = []
    real = fastrnn._C.optim_adam
    monkeypatch.setattr(fastrnn._C, "optim_adam", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    opt = optim.Adam(model, lr=0.1)
    before = {k: v.copy() for k, v in model.params.items()}
    for g in model.grads.values():
        g.fill(1.0)
    opt.step()
    assert len(calls) == 1 and len(model.params) == 10
    for k, v in model.params.items():  # every tensor moved, through the model's live arrays
        np.testing.assert_allclose(v, before[k] - 0.1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", [c for c in CONFIGS if len(c[1]) > 1],
                         ids=[i for i, c in zip(IDS, CONFIGS) if len(c[1]) > 1])
def test_state_dict_resume_is_identical(name, kw):
    params, grads = problem(np.float32, steps=6, seed=3)
    full, _ = run(name, kw, params, grads)
    # first half, checkpoint, then a fresh optimizer on fresh arrays resumes
    half, opt = run(name, kw, params, grads[:3])
    sd = opt.state_dict()
    ps = [p.copy() for p in half[-1]]
    gs = [np.zeros_like(p) for p in ps]
    opt2 = getattr(optim, name)(list(zip(ps, gs)), **kw)
    opt2.load_state_dict(sd)
    assert opt2.step_count == 3
    for step, gstep in enumerate(grads[3:], 3):
        for g, new in zip(gs, gstep):
            g[...] = new
        opt2.step()
        for p, q in zip(ps, full[step]):
            np.testing.assert_array_equal(p, q)


def test_state_dict_is_a_copy_and_load_checks():
    w, g = np.ones(3), np.ones(3)
    opt = optim.SGD({"w": (w, g)}, lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    sd["state"]["w"]["momentum_buffer"][...] = 7
    assert opt.state["w"]["momentum_buffer"][0] == 1.0
    with pytest.raises(KeyError, match="state has parameters \\['v'\\], expected \\['w'\\]"):
        opt.load_state_dict({**sd, "state": {"v": sd["state"]["w"]}})
    bad = opt.state_dict()
    bad["state"]["w"]["momentum_buffer"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"state\['w'\]\['momentum_buffer'\] has shape \(4,\), expected \(3,\)"):
        opt.load_state_dict(bad)
    with pytest.raises(KeyError, match="'step', 'param_groups' and 'state'"):
        opt.load_state_dict({"state": {}})
    assert opt.state["w"]["momentum_buffer"][0] == 1.0  # failed loads changed nothing


def test_hyperparameters_editable_between_steps():
    w, g = np.zeros(1), np.ones(1)
    opt = optim.SGD([(w, g)], lr=0.1)
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    opt.lr = 1.0
    opt.step()
    np.testing.assert_allclose(w, [-1.6])
    opt.param_groups[0]["momentum"] = 0.9  # no buffer was allocated for it
    with pytest.raises(ValueError, match="momentum buffer was not allocated"):
        opt.step()


def test_bad_input_errors():
    w = np.zeros((2, 3))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([])
    with pytest.raises(TypeError, match="expected a numpy.ndarray"):
        optim.SGD([([1.0], np.zeros(1))])
    with pytest.raises(TypeError, match="has dtype int64, expected float32 or float64"):
        optim.SGD([(np.zeros(2, np.int64), np.zeros(2, np.int64))])
    with pytest.raises(ValueError, match=r"gradient '0' has shape \(3,\) and dtype float64, expected"):
        optim.SGD([(np.zeros(2), np.zeros(3))])
    with pytest.raises(ValueError, match="parameter '0' is not C-contiguous"):
        optim.SGD([(w.T, np.zeros((3, 2)))])
    ro = np.zeros(2); ro.flags.writeable = False
    with pytest.raises(ValueError, match="parameter '0' is read-only"):
        optim.Adam([(ro, np.zeros(2))])
    with pytest.raises(ValueError, match="parameter '1' shares memory with parameter '0'"):
        optim.Adam([(w, np.zeros((2, 3))), (w.reshape(-1), np.zeros(6))])
    with pytest.raises(ValueError, match="parameter '0' shares memory with gradient '0'"):
        optim.Adam([(w, w)])
    with pytest.raises(ValueError, match=r"SGD: lr = -1 is out of range"):
        optim.SGD([(np.zeros(1), np.zeros(1))], lr=-1)
    with pytest.raises(ValueError, match=r"Adam: betas\[1\] = 1.0 is out of range"):
        optim.Adam([(np.zeros(1), np.zeros(1))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0 and dampening = 0"):
        optim.SGD([(np.zeros(1), np.zeros(1))], nesterov=True)
    with pytest.raises(TypeError, match="lr must be a real number, got str"):
        optim.RMSprop([(np.zeros(1), np.zeros(1))], lr="0.1")
    with pytest.raises(TypeError, match="a module with .params/.grads"):
        optim.Adagrad(3)


# -- learning-rate schedules

def _lrs(make, epochs, lr=0.5):
    opt = optim.SGD([(np.zeros(1), np.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(epochs):
        sched.step()
        out.append(opt.lr)
    return out, sched


def test_schedules_closed_form():
    lrs, _ = _lrs(lambda o: optim.StepLR(o, step_size=3, gamma=0.5), 9)
    np.testing.assert_allclose(lrs, [0.5 * 0.5 ** ((e + 1) // 3) for e in range(9)], rtol=1e-15)
    lrs, _ = _lrs(lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=0.1), 10)
    np.testing.assert_allclose(lrs, [0.1 + 0.4 * (1 + math.cos(math.pi * (e + 1) / 10)) / 2 for e in range(10)],
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("which", ["step", "cosine", "cosine_eta"])
def test_schedules_match_torch(which):
    torch = pytest.importorskip("torch")
    make = {"step": lambda o, m: m.StepLR(o, step_size=4, gamma=0.3),
            "cosine": lambda o, m: m.CosineAnnealingLR(o, T_max=5),
            "cosine_eta": lambda o, m: m.CosineAnnealingLR(o, T_max=7, eta_min=0.01)}[which]
    lrs, _ = _lrs(lambda o: make(o, optim), 25)   # past T_max: the rate comes back up, as in torch
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    tsched = make(topt, torch.optim.lr_scheduler)
    ref = []
    for _ in range(25):
        topt.step()
        tsched.step()
        ref.append(topt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, ref, rtol=1e-14, atol=1e-17)


def test_schedule_state_dict_resume():
    full, _ = _lrs(lambda o: optim.CosineAnnealingLR(o, T_max=6), 10)
    _, sched = _lrs(lambda o: optim.CosineAnnealingLR(o, T_max=6), 4)
    opt = optim.SGD([(np.zeros(1), np.zeros(1))], lr=sched.get_last_lr()[0])
    resumed = optim.CosineAnnealingLR(opt, T_max=6)
    resumed.load_state_dict(sched.state_dict())
    rest = []
    for _ in range(6):
        resumed.step()
        rest.append(opt.lr)
    assert rest == full[4:]


def test_schedule_bad_input():
    opt = optim.SGD([(np.zeros(1), np.zeros(1))], lr=0.5)
    with pytest.raises(ValueError, match="StepLR: step_size must be positive, got 0"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(TypeError, match="optimizer must be a fastrnn.optim optimizer"):
        optim.CosineAnnealingLR(object(), T_max=3)
