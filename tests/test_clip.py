"""fastrnn.clip: torch equivalence, non-finite policies, per-tensor/AGC/max-norm formulas, input kinds."""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import clip

NORM_TYPES = [1.0, 2.0, 3.0, math.inf]
POLICIES = ["raise", "skip", "zero", "propagate"]


def _grads(dtype=np.float64, seed=0, scale=1.0):
    r = np.random.default_rng(seed)
    shapes = {"weight": (6, 5), "bias": (6,), "conv": (3, 4, 2), "scalar": ()}
    return {k: np.asarray(scale * r.standard_normal(s), dtype) for k, s in shapes.items()}


def _copy(d):
    return {k: v.copy() for k, v in d.items()}


def _torch_grads(torch, grads):
    """Parameters whose .grad holds a copy of each gradient (for torch.nn.utils)."""
    params = []
    for g in grads.values():
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype))
        p.grad = torch.from_numpy(g.copy())
        params.append(p)
    return params


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _nonfinite_grads(bad=np.nan):
    g = _grads(seed=1, scale=3.0)
    g["bias"][2] = bad
    return g


# --------------------------------------------------------------------------- against torch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_global_norm_clipping_equals_torch(norm_type, max_norm, dtype):
    torch = pytest.importorskip("torch")
    grads = _grads(dtype, scale=2.0)
    params = _torch_grads(torch, grads)
    total_t = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type).item()
    total = clip.clip_by_global_norm_(grads, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(total_t, rel=_tol(dtype)["rtol"])
    for (k, g), p in zip(grads.items(), params):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, p.grad.numpy(), **_tol(dtype), err_msg=k)
    if max_norm < total:
        assert clip.global_norm(grads, norm_type) == pytest.approx(max_norm, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_value_clipping_equals_torch(dtype):
    torch = pytest.importorskip("torch")
    grads = _grads(dtype, scale=2.0)
    expected_norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    params = _torch_grads(torch, grads)
    torch.nn.utils.clip_grad_value_(params, 0.7)
    assert clip.clip_by_value_(grads, 0.7) == pytest.approx(expected_norm, rel=1e-12)
    for g, p in zip(grads.values(), params):
        assert g.dtype == dtype and np.abs(g).max() <= 0.7
        np.testing.assert_array_equal(g, p.grad.numpy())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_propagate_equals_torch_with_nonfinite(bad):
    torch = pytest.importorskip("torch")
    for norm_type in (2.0, math.inf):
        grads = _nonfinite_grads(bad)
        params = _torch_grads(torch, grads)
        total_t = torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type=norm_type).item()
        total = clip.clip_by_global_norm_(grads, 1.0, norm_type=norm_type, nonfinite="propagate")
        assert (math.isnan(total) and math.isnan(total_t)) or total == total_t
        for g, p in zip(grads.values(), params):
            np.testing.assert_array_equal(g, p.grad.numpy())   # NaN where torch has NaN
        grads = _nonfinite_grads(bad)
        params = _torch_grads(torch, grads)
        torch.nn.utils.clip_grad_value_(params, 0.5)
        clip.clip_by_value_(grads, 0.5, nonfinite="propagate")
        for g, p in zip(grads.values(), params):
            np.testing.assert_array_equal(g, p.grad.numpy())


def test_torch_tensors_and_modules_are_changed_in_place():
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(3, 4)
    twin = torch.nn.LSTM(3, 4)
    twin.load_state_dict(lstm.state_dict())
    x = torch.randn(5, 2, 3)
    for m in (lstm, twin):
        (m(x)[0] ** 2).sum().mul(10).backward()
    total_t = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1).item()
    assert clip.clip_by_global_norm_(lstm, 0.1) == pytest.approx(total_t, rel=1e-6)   # nn.Module: p.grad
    for p, q in zip(lstm.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-6, atol=1e-8)
    tensors = {"a": torch.tensor([3.0, 4.0]), "b": torch.zeros(2, dtype=torch.float64)}
    assert clip.clip_by_norm_(tensors, 1.0) == 5.0
    assert torch.allclose(tensors["a"], torch.tensor([0.6, 0.8]))
    with pytest.raises(TypeError, match=r"global_norm: gradient a is a torch tensor of dtype torch.bfloat16"):
        clip.global_norm({"a": torch.zeros(2, dtype=torch.bfloat16)})


# --------------------------------------------------------------------------- non-finite policies

@pytest.mark.parametrize("fn,args", [(clip.clip_by_global_norm_, (1.0,)), (clip.clip_by_norm_, (1.0,)),
                                     (clip.clip_by_value_, (0.5,))], ids=["global", "per_tensor", "value"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_raise_names_tensor_and_index_and_changes_nothing(fn, args, bad):
    grads = _nonfinite_grads(bad)
    before = _copy(grads)
    with pytest.raises(FloatingPointError, match=rf"{fn.__name__}: gradient bias has a non-finite value "
                                                 rf"{bad} at index \(2,\); pass nonfinite='skip'"):
        fn(grads, *args)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("fn,args", [(clip.clip_by_global_norm_, (1.0,)), (clip.clip_by_norm_, (1.0,)),
                                     (clip.clip_by_value_, (0.5,))], ids=["global", "per_tensor", "value"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skip_leaves_gradients_and_reports_the_nonfinite_norm(fn, args, bad):
    grads = _nonfinite_grads(bad)
    before = _copy(grads)
    total = fn(grads, *args, nonfinite="skip")
    assert math.isnan(total) if np.isnan(bad) else total == math.inf
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_zero_policy_zeroes_only_nonfinite_entries_then_clips_the_rest(norm_type):
    grads = _nonfinite_grads(np.nan)
    grads["conv"][1, 2, 0] = -np.inf
    expected = _copy(grads)
    expected["bias"][2] = 0
    expected["conv"][1, 2, 0] = 0
    rest = clip.global_norm(expected, norm_type)
    coef = min(1.0, 0.5 / (rest + 1e-6))
    total = clip.clip_by_global_norm_(grads, 0.5, norm_type=norm_type, nonfinite="zero")
    assert math.isnan(total)                       # the norm as given is still reported
    for k in grads:
        np.testing.assert_allclose(grads[k], expected[k] * coef, rtol=1e-12, err_msg=k)
    assert clip.global_norm(grads, norm_type) == pytest.approx(0.5, rel=1e-5)


def test_zero_policy_for_per_tensor_and_value_clipping():
    grads = _nonfinite_grads(np.inf)
    expected = _copy(grads)
    expected["bias"][2] = 0
    assert clip.clip_by_norm_(grads, 1.0, nonfinite="zero") == math.inf
    for k in grads:
        n = np.linalg.norm(expected[k])
        np.testing.assert_allclose(grads[k], expected[k] * min(1.0, 1.0 / n), rtol=1e-12)
    grads = _nonfinite_grads(np.nan)
    assert math.isnan(clip.clip_by_value_(grads, 0.5, nonfinite="zero"))
    assert grads["bias"][2] == 0 and np.isfinite(grads["weight"]).all() and np.abs(grads["weight"]).max() <= 0.5


def test_propagate_per_tensor_only_poisons_the_bad_tensor():
    grads = _nonfinite_grads(np.nan)
    clip.clip_by_norm_(grads, 1.0, nonfinite="propagate")
    assert np.isnan(grads["bias"]).all()
    assert np.linalg.norm(grads["weight"]) == pytest.approx(1.0, rel=1e-12)


# --------------------------------------------------------------------------- formulas

def test_clip_by_norm_is_per_tensor():
    grads = {"big": np.array([[3.0, 4.0], [0.0, 12.0]]), "small": np.array([0.1, -0.2]),
             "f32": np.full(4, 2.0, np.float32)}
    before = _copy(grads)
    total = clip.clip_by_norm_(grads, 2.0)
    assert total == pytest.approx(math.sqrt(169 + 0.05 + 16), rel=1e-12)
    np.testing.assert_allclose(grads["big"], before["big"] * 2.0 / 13.0, rtol=1e-15)   # same direction
    np.testing.assert_array_equal(grads["small"], before["small"])                      # within the limit
    assert grads["f32"].dtype == np.float32
    np.testing.assert_allclose(grads["f32"], np.full(4, 1.0, np.float32), rtol=1e-6)


def test_global_norm_values():
    g = _grads(seed=3)
    flat = np.concatenate([v.ravel() for v in g.values()])
    for p in (1.0, 2.0, 3.0, 2.5):
        assert clip.global_norm(g, p) == pytest.approx(np.sum(np.abs(flat) ** p) ** (1 / p), rel=1e-12)
    assert clip.global_norm(g, math.inf) == np.abs(flat).max()
    assert clip.global_norm({}) == 0.0 and clip.clip_by_global_norm_([], 1.0) == 0.0
    # scaled computation: no overflow where the sum of squares would overflow float64
    huge = {"a": np.array([1e200, -1e200])}
    assert clip.global_norm(huge) == pytest.approx(math.sqrt(2) * 1e200, rel=1e-14)
    clip.clip_by_global_norm_(huge, 1.0)
    np.testing.assert_allclose(huge["a"], [2 ** -0.5, -2 ** -0.5], rtol=1e-6)
    # global_norm only reads: read-only arrays are fine
    ro = np.ones(4)
    ro.setflags(write=False)
    assert clip.global_norm([ro]) == 2.0


def _agc_reference(w, g, clipping, eps):
    """AGC written out directly: per row of a ≥ 2-D tensor, per whole tensor for 1-D/0-D."""
    w, g = w.astype(np.float64), g.astype(np.float64).copy()
    units = [np.s_[...]] if g.ndim <= 1 else [np.s_[i] for i in range(g.shape[0])]
    for u in units:
        wn, gn = np.linalg.norm(w[u]), np.linalg.norm(g[u])
        limit = clipping * max(wn, eps)
        if gn > limit:
            g[u] *= limit / gn
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adaptive_clip_matches_the_formula(dtype):
    r = np.random.default_rng(0)
    params = {"w": r.standard_normal((8, 5)).astype(dtype), "b": r.standard_normal(8).astype(dtype),
              "k": r.standard_normal((4, 3, 2)).astype(dtype), "zero": np.zeros((3, 3), dtype)}
    grads = {k: (r.standard_normal(v.shape) * r.choice([0.001, 0.1], size=v.shape[:1] or (1,))
                 .reshape((-1,) + (1,) * max(v.ndim - 1, 0))).astype(dtype) for k, v in params.items()}
    grads["b"] *= 0.001
    before_p, before_g = _copy(params), _copy(grads)
    total = clip.adaptive_clip_(params, grads, clipping=0.05, eps=1e-3)
    assert total == pytest.approx(clip.global_norm(before_g), rel=1e-12)
    clipped_rows = kept_rows = 0
    for k in grads:
        expected = _agc_reference(before_p[k], before_g[k], 0.05, 1e-3)
        assert grads[k].dtype == dtype
        np.testing.assert_allclose(grads[k], expected, **_tol(dtype), err_msg=k)
        np.testing.assert_array_equal(params[k], before_p[k])       # weights untouched
        if grads[k].ndim >= 2:
            changed = np.any(grads[k] != before_g[k], axis=tuple(range(1, grads[k].ndim)))
            clipped_rows += changed.sum()
            kept_rows += (~changed).sum()
    assert clipped_rows > 0 and kept_rows > 0      # both branches exercised
    # zero-initialised weights: the eps floor bounds the unit norm by clipping·eps
    assert np.linalg.norm(grads["zero"], axis=1).max() <= 0.05 * 1e-3 * (1 + 1e-5)


def test_adaptive_clip_on_a_layer_uses_its_params_and_grads():
    lstm = fastrnn.LSTM(3, 4, rng=0, dtype=np.float64)
    out, _ = lstm(np.random.default_rng(0).standard_normal((6, 2, 3)))
    lstm.backward(100 * np.ones_like(out))
    p, g = _copy(lstm.params), _copy(lstm.grads)
    assert clip.adaptive_clip_(lstm) == pytest.approx(clip.global_norm(g), rel=1e-15)
    clipped = False
    for k in g:
        np.testing.assert_allclose(lstm.grads[k], _agc_reference(p[k], g[k], 0.01, 1e-3), rtol=1e-12, err_msg=k)
        np.testing.assert_array_equal(lstm.params[k], p[k])
        clipped |= not np.array_equal(lstm.grads[k], g[k])
    assert clipped


def test_max_norm_constraint():
    w = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    assert clip.max_norm_(w, 2.0) == 5.0
    np.testing.assert_allclose(w, [[1.2, 1.6], [0.3, 0.4], [0.0, 0.0]], rtol=1e-15)
    w = np.array([[3.0, 0.1], [4.0, 0.1]])
    assert clip.max_norm_({"w": w}, 1.0, axis=0) == 5.0            # columns
    np.testing.assert_allclose(w, [[0.6, 0.1], [0.8, 0.1]], rtol=1e-15)
    w = np.full((2, 2), 2.0, np.float32)
    assert clip.max_norm_([w], 1.0, axis=None) == 4.0              # whole tensor
    np.testing.assert_allclose(w, np.full((2, 2), 0.5), rtol=1e-6)
    # a layer: only the weight matrices, each row (unit) at most max_value
    rnn = fastrnn.RNN(3, 5, rng=0, dtype=np.float64)
    for v in rnn.params.values():
        v *= 10
    biases = {k: v.copy() for k, v in rnn.params.items() if k.startswith("bias")}
    largest = max(np.linalg.norm(v, axis=-1).max() for k, v in rnn.params.items() if k.startswith("weight"))
    assert clip.max_norm_(rnn, 1.0) == pytest.approx(largest, rel=1e-12)
    for k, v in rnn.params.items():
        if k.startswith("weight"):
            assert np.linalg.norm(v, axis=1).max() == pytest.approx(1.0, rel=1e-12)
        else:
            np.testing.assert_array_equal(v, biases[k])
    with pytest.raises(ValueError, match=r"max_norm_: axis=2 is not valid for parameter \[0\] of shape \(2, 2\)"):
        clip.max_norm_([w], 1.0, axis=2)


# --------------------------------------------------------------------------- input kinds

def test_layers_lists_dicts_and_arrays_are_equivalent():
    layers = [fastrnn.GRU(2, 3, rng=s, dtype=np.float64) for s in (0, 1)]
    x = np.random.default_rng(0).standard_normal((4, 1, 2))
    for lay in layers:
        out, _ = lay(x)
        lay.backward(np.ones_like(out))
    dicts = [_copy(lay.grads) for lay in layers]
    arrays = [a for d in dicts for a in d.values()]
    expected = math.sqrt(sum(float(np.sum(a ** 2)) for a in arrays))
    assert clip.global_norm(layers) == pytest.approx(expected, rel=1e-12)
    assert clip.global_norm(layers[0]) == pytest.approx(clip.global_norm(dicts[0]), rel=1e-15)
    assert clip.global_norm(arrays) == pytest.approx(expected, rel=1e-12)
    assert clip.global_norm(arrays[0]) == pytest.approx(np.linalg.norm(arrays[0]), rel=1e-12)
    assert clip.clip_by_global_norm_(layers, 0.01) == pytest.approx(expected, rel=1e-12)
    assert clip.clip_by_global_norm_(dicts, 0.01) == pytest.approx(expected, rel=1e-12)
    for lay, d in zip(layers, dicts):
        for k in d:
            np.testing.assert_array_equal(lay.grads[k], d[k])
    assert clip.global_norm(layers) == pytest.approx(0.01, rel=1e-4)
    # names in messages carry the list position
    bad = [{"a": np.ones(2)}, {"b": np.array([1.0, np.nan])}]
    with pytest.raises(FloatingPointError, match=r"gradient \[1\]\.b has a non-finite value nan at index \(1,\)"):
        clip.clip_by_global_norm_(bad, 1.0)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: clip.clip_by_global_norm_({"a": np.ones(2)}, 0.0), ValueError, r"clip_by_global_norm_: max_norm must be positive, got 0.0"),
    (lambda: clip.clip_by_global_norm_({"a": np.ones(2)}, 1.0, norm_type=0.5), ValueError, r"norm_type must be >= 1"),
    (lambda: clip.clip_by_global_norm_({"a": np.ones(2)}, 1.0, norm_type="2"), TypeError, r"norm_type must be a number"),
    (lambda: clip.clip_by_global_norm_({"a": np.ones(2)}, 1.0, nonfinite="ignore"), ValueError,
     r"unknown nonfinite 'ignore'; expected one of 'raise', 'skip', 'zero', 'propagate'"),
    (lambda: clip.clip_by_value_({"a": np.ones(2)}, -1.0), ValueError, r"clip_by_value_: clip_value must be non-negative"),
    (lambda: clip.clip_by_norm_({"a": np.ones(2)}, float("nan")), ValueError, r"clip_by_norm_: max_norm must be positive"),
    (lambda: clip.global_norm("grads"), TypeError, r"global_norm: expected a layer \(with a .grads dict\)"),
    (lambda: clip.global_norm({"a": [1.0]}), TypeError, r"global_norm: gradient a must be a NumPy array"),
    (lambda: clip.global_norm({"a": np.ones(2, np.int32)}), TypeError, r"gradient a has dtype int32"),
    (lambda: clip.clip_by_value_({"a": _read_only()}, 1.0), ValueError, r"clip_by_value_: gradient a is read-only"),
    (lambda: clip.adaptive_clip_({"w": np.ones((2, 2))}), TypeError, r"adaptive_clip_: params is a dict .* grads must be given"),
    (lambda: clip.adaptive_clip_({"w": np.ones((2, 2))}, {"v": np.ones((2, 2))}), ValueError,
     r"adaptive_clip_: gradient v has no matching parameter"),
    (lambda: clip.adaptive_clip_({"w": np.ones((2, 2))}, {"w": np.ones(4)}), ValueError,
     r"gradient w has shape \(4,\) but its parameter has shape \(2, 2\)"),
    (lambda: clip.adaptive_clip_({"w": np.ones(2)}, {"w": np.ones(2)}, clipping=0), ValueError,
     r"adaptive_clip_: clipping must be positive"),
    (lambda: clip.max_norm_({"w": np.ones(2)}, 0), ValueError, r"max_norm_: max_value must be positive"),
])
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _read_only():
    a = np.ones(2)
    a.setflags(write=False)
    return a
