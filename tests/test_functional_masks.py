"""The `masks=` keyword of the functional forwards: explicit, already-scaled dropout masks."""
import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F


def _setup(dtype=np.float64):
    layer = fastrnn.GRU(3, 4, num_layers=2, bidirectional=True, dropout=0.5, dtype=dtype, rng=0)
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(dtype)
    return layer, x


def test_explicit_masks_equal_masks_drawn_from_rng():
    layer, x = _setup()
    # The masks functional draws itself from rng=7 (same recipe), passed explicitly instead.
    keep = np.random.default_rng(7).random((1, 5, 2, 8)) >= 0.5
    masks = keep / 0.5
    out_rng, h_rng, ctx_rng = F.gru_forward(x, layer.params, num_layers=2, bidirectional=True, dropout=0.5,
                                            training=True, rng=7)
    out_m, h_m, ctx_m = F.gru_forward(x, layer.params, num_layers=2, bidirectional=True, dropout=0.5,
                                      training=True, rng=123, masks=masks)
    np.testing.assert_array_equal(out_m, out_rng)
    np.testing.assert_array_equal(h_m, h_rng)
    g = np.ones_like(out_m)
    for a, b in zip(F.backward(ctx_m, g)[:2], F.backward(ctx_rng, g)[:2]):
        np.testing.assert_array_equal(a, b)


def test_all_ones_masks_equal_no_dropout():
    layer, x = _setup()
    out_m, _, _ = F.gru_forward(x, layer.params, num_layers=2, bidirectional=True, dropout=0.5, training=True,
                                masks=np.ones((1, 5, 2, 8)))
    out, _, _ = F.gru_forward(x, layer.params, num_layers=2, bidirectional=True)
    np.testing.assert_allclose(out_m, out, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kw,err,match", [
    ({"masks": np.ones((1, 5, 2, 7))}, ValueError, r"masks has shape \(1, 5, 2, 7\), expected \(L-1=1, T=5, N=2, D\*H=8\)"),
    ({"masks": np.ones((1, 5, 2, 8), np.float32)}, TypeError, "masks has dtype float32, expected float64"),
    ({"masks": np.ones((1, 5, 2, 8)), "training": False}, ValueError, "masks given but dropout does not apply"),
    ({"masks": np.ones((1, 5, 2, 8)), "dropout": 0.0}, ValueError, "masks given but dropout does not apply"),
])
def test_bad_masks_raise(kw, err, match):
    layer, x = _setup()
    args = {"num_layers": 2, "bidirectional": True, "dropout": 0.5, "training": True, **kw}
    with pytest.raises(err, match=match):
        F.gru_forward(x, layer.params, **args)
