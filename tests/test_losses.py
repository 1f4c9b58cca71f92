"""fastrnn.losses: analytic values, central finite differences, torch.nn.functional as oracle."""
import math

import numpy as np
import pytest

from fastrnn import losses

DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum"]


def _inputs(name, dtype, rng, shape=(4, 3, 5)):
    """(prediction, target) for each loss; cross-entropy targets include ignored positions."""
    pred = rng.standard_normal(shape).astype(dtype) * 3
    if name == "mse":
        return pred, rng.standard_normal(shape).astype(dtype)
    if name == "bce_with_logits":
        return pred, rng.uniform(0, 1, shape).astype(dtype)
    target = rng.integers(0, shape[-1], shape[:-1])
    target[0, 0] = -100
    return pred, target


def _fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


# -- analytic values

def test_mse_analytic():
    value, grad = losses.mse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 0.0]]))
    assert value == pytest.approx((0 + 4 + 9 + 16) / 4)
    np.testing.assert_allclose(grad, [[0.0, 1.0], [1.5, 2.0]])
    value, grad = losses.mse(np.array([3.0]), np.array([1.0]), reduction="sum")
    assert value == 4.0 and grad.tolist() == [4.0]


def test_bce_with_logits_analytic_and_stable():
    x = np.array([0.0, 2.0, -1000.0, 1000.0, -30.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    value, grad = losses.bce_with_logits(x, y, reduction="sum")
    expected = math.log(2) + math.log1p(math.exp(2.0)) + 0 + 0 + 30.0 + math.log1p(math.exp(-30.0))
    assert value == pytest.approx(expected, rel=1e-14)
    sig = 1 / (1 + np.exp(-np.array([0.0, 2.0]))).astype(np.float64)
    np.testing.assert_allclose(grad, [sig[0] - 1, sig[1], 0.0, 0.0, 1 / (1 + math.exp(30.0)) - 1], rtol=1e-14, atol=0)
    assert np.isfinite(grad).all()


def test_cross_entropy_analytic():
    logits = np.log(np.array([[1.0, 2.0, 5.0], [1.0, 1.0, 1.0]]))   # softmax = [.125, .25, .625], uniform
    value, grad = losses.cross_entropy(logits, np.array([2, 0]))
    assert value == pytest.approx((-math.log(0.625) + math.log(3)) / 2, rel=1e-14)
    np.testing.assert_allclose(grad, [[0.0625, 0.125, -0.1875], [-1 / 3, 1 / 6, 1 / 6]], rtol=1e-13)


def test_cross_entropy_ignore_index():
    logits = np.zeros((3, 4))
    value, grad = losses.cross_entropy(logits, np.array([1, 7, 2]), ignore_index=7)
    assert value == pytest.approx(math.log(4))
    assert not grad[1].any() and grad[0].sum() == pytest.approx(0)
    value, grad = losses.cross_entropy(logits, np.full(3, -100))        # all ignored: NaN, zero gradient
    assert math.isnan(value) and not grad.any()
    value, grad = losses.cross_entropy(logits, np.full(3, -100), reduction="sum")
    assert value == 0.0 and not grad.any()


# -- finite differences (float64)

@pytest.mark.parametrize("name", ["mse", "bce_with_logits", "cross_entropy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_matches_finite_differences(name, reduction, rng):
    fn = getattr(losses, name)
    pred, target = _inputs(name, np.float64, rng, shape=(3, 2, 4))
    value, grad = fn(pred, target, reduction=reduction)
    fd = _fd_grad(lambda p: fn(p, target, reduction=reduction)[0], pred)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["mse", "bce_with_logits", "cross_entropy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_shape_and_inputs_untouched(name, dtype, rng):
    pred, target = _inputs(name, dtype, rng)
    p0, t0 = pred.copy(), target.copy()
    value, grad = getattr(losses, name)(pred, target)
    assert isinstance(value, float)
    assert grad.dtype == dtype and grad.shape == pred.shape
    np.testing.assert_array_equal(pred, p0)
    np.testing.assert_array_equal(target, t0)


# -- torch as oracle

@pytest.mark.parametrize("name", ["mse", "bce_with_logits", "cross_entropy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(name, reduction, dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    pred, target = _inputs(name, dtype, rng)
    value, grad = getattr(losses, name)(pred, target, reduction=reduction)
    tp = torch.tensor(pred, requires_grad=True)
    if name == "mse":
        ref = F.mse_loss(tp, torch.tensor(target), reduction=reduction)
    elif name == "bce_with_logits":
        ref = F.binary_cross_entropy_with_logits(tp, torch.tensor(target), reduction=reduction)
    else:  # classes on the last axis here, on axis 1 in torch
        K = pred.shape[-1]
        ref = F.cross_entropy(tp.reshape(-1, K), torch.tensor(target.reshape(-1)), reduction=reduction)
    ref.backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert value == pytest.approx(ref.item(), rel=tol)
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=tol, atol=tol * np.abs(tp.grad.numpy()).max())


# -- non-finite inputs propagate without warnings (pytest turns warnings into errors)

def test_nonfinite_propagates_silently():
    assert losses.mse(np.array([np.inf]), np.array([0.0]))[0] == math.inf
    assert math.isnan(losses.bce_with_logits(np.array([np.nan]), np.array([1.0]))[0])
    value, grad = losses.cross_entropy(np.array([[np.inf, 0.0], [1e308, -1e308]]), np.array([0, 1]))
    assert math.isnan(value) or math.isinf(value)


# -- bad input

def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"losses.mse: target has shape \(3,\), expected the shape of pred \(2,\)"):
        losses.mse(np.zeros(2), np.zeros(3))
    with pytest.raises(TypeError, match="target has dtype float64, expected float32"):
        losses.mse(np.zeros(2, np.float32), np.zeros(2))
    with pytest.raises(TypeError, match="unsupported dtype int64"):
        losses.bce_with_logits(np.zeros(2, np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'none'"):
        losses.mse(np.zeros(2), np.zeros(2), reduction="none")
    with pytest.raises(TypeError, match="integer class indices, got dtype float64"):
        losses.cross_entropy(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"target\[1\] = 3 is not a class index in \[0, 3\)"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected logits.shape\[:-1\] = \(2,\)"):
        losses.cross_entropy(np.zeros((2, 3)), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="expected \\(..., K\\)"):
        losses.cross_entropy(np.zeros((2, 0)), np.zeros(2, np.int64))
