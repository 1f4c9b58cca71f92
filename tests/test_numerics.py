"""Numerical hygiene on long sequences (T = 100 000, small H, N = 1..2).

Stated bounds (scaled error |a − b| / max(1, max|b|), docs/guarantees.md):
- float64 matches the float64 reference to 1e-12 (full length for LSTM; a 2000-step prefix for
  every cell; the last 500 steps of the long run restarted from its own state);
- float32 stays within 2e-6 of float64 on outputs, states, grad_x and grad_h0, 1e-5 on the weight
  gradients (sums over T·N rows: OpenBLAS float32 GEMMs) and 2e-6 on the bias gradients (256-row
  float32 blocks summed in double) — no drift with T;
- a long run equals the same run cut into chunks that carry the state (bitwise), and its BPTT
  equals the chained BPTT of the chunks (to rounding): nothing degrades along the sequence.
The float64 reference is a Python loop (~30 µs a step), so only LSTM's forward runs it over the
full length; elsewhere fastrnn's float64 path, itself checked against it, is the oracle.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn.core import reference as ref

from util import CELLS, make_layer

T_LONG, C, H = 100_000, 2, 3


def scaled_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _ref_forward(cell, layer, x, hx=None):
    kind, kw = CELLS[cell]
    return ref.forward(kind, x, {k: v.astype(np.float64) for k, v in layer.params.items()}, hx,
                       nonlinearity=kw.get("nonlinearity", "tanh"), reset_after=kw.get("reset_after", True))


def _inputs(T, N, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, N, C)).astype(dtype), rng.standard_normal((T, N, H)).astype(dtype)


def test_lstm_long_forward_matches_reference_float64():
    layer = make_layer("lstm", C, H, dtype=np.float64, seed=0).eval()
    x, _ = _inputs(T_LONG, 1)
    out, (h_n, c_n) = layer(x)
    r_out, r_h, r_c, _ = _ref_forward("lstm", layer, x)
    assert scaled_error(out, r_out) <= 1e-12
    assert scaled_error(h_n, r_h) <= 1e-12 and scaled_error(c_n, r_c) <= 1e-12


@pytest.mark.parametrize("cell", list(CELLS))
def test_float64_prefix_and_tail_match_reference(cell):
    """The first 2000 steps forward and backward, and the last 500 steps of the 100 000-step run
    restarted from the run's own state at step T − 500."""
    layer = make_layer(cell, C, H, dtype=np.float64, seed=0)
    x, g = _inputs(2000, 2)
    out, state = layer(x)
    grad_x, grad_h0 = layer.backward(g)[:2]
    r_out, _, _, cache = _ref_forward(cell, layer, x)
    r_gx, r_gh0, _, r_grads = ref.backward(cache, g)
    assert scaled_error(out, r_out) <= 1e-12
    assert scaled_error(grad_x, r_gx) <= 1e-12 and scaled_error(grad_h0, r_gh0) <= 1e-12
    for name, want in r_grads.items():
        assert scaled_error(layer.grads[name], want) <= 1e-12, name

    layer.eval()
    x, _ = _inputs(T_LONG, 2)
    out, _ = layer(x)
    _, head_state = layer(x[:-500])
    hx = tuple(head_state) if cell == "lstm" else head_state
    r_out = _ref_forward(cell, layer, x[-500:], hx)[0]
    assert scaled_error(out[-500:], r_out) <= 1e-12


def _train(layer, x, g):
    layer.zero_grad()
    out, state = layer(x)
    grad_x, grad_h0 = layer.backward(g)[:2]
    return dict(out=out, state=state[0] if isinstance(state, tuple) else state, grad_x=grad_x,
                grad_h0=grad_h0, **{k: v.copy() for k, v in layer.grads.items()})


@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_long_run_stays_close_to_float64(isa, cell):
    x, g = _inputs(T_LONG, 2)
    want = _train(make_layer(cell, C, H, dtype=np.float64, seed=0), x, g)
    got = _train(make_layer(cell, C, H, dtype=np.float32, seed=0), x.astype(np.float32), g.astype(np.float32))
    for key, value in got.items():
        bound = 1e-5 if key.startswith("weight") else 2e-6
        err = scaled_error(value, want[key])
        assert err <= bound, f"{key}: {err:.3g} > {bound}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", list(CELLS))
def test_long_run_equals_chunked_run(cell, dtype):
    """Forward: bitwise equal to chunks of 9999 steps (odd, so the state buffers change parity)
    carrying (h, c). BPTT: equal to the chained BPTT of the chunks (grad_h0 of a chunk is
    grad_h_n of the one before), up to the order in which weight gradients are summed."""
    x, g = _inputs(T_LONG, 1, dtype)
    layer = make_layer(cell, C, H, dtype=dtype, seed=0)
    whole = _train(layer, x, g)
    lstm = cell == "lstm"
    cuts = list(range(0, T_LONG, 9999)) + [T_LONG]
    hx, outs, ctxs = None, [], []
    for a, b in zip(cuts, cuts[1:]):
        out, state = layer(x[a:b], hx)
        outs.append(out)
        ctxs.append(layer._ctx)
        hx = state
    np.testing.assert_array_equal(np.concatenate(outs), whole["out"])
    np.testing.assert_array_equal(hx[0] if lstm else hx, whole["state"])

    grads = {k: np.zeros_like(v) for k, v in layer.grads.items()}
    carry, grad_x = (None, None), []
    for (a, b), ctx in reversed(list(zip(zip(cuts, cuts[1:]), ctxs))):
        gx, gh0, gc0, _ = fastrnn.functional.backward(ctx, g[a:b], carry[0], carry[1] if lstm else None,
                                                      grads=grads)
        carry = (gh0, gc0)
        grad_x.insert(0, gx)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert scaled_error(np.concatenate(grad_x), whole["grad_x"]) <= tol
    assert scaled_error(carry[0], whole["grad_h0"]) <= tol
    for name, value in grads.items():
        assert scaled_error(value, whole[name]) <= tol, name
