"""Every cell x option x dtype against the float64 reference, on every available ISA."""
import numpy as np
import pytest

from util import CELLS, TOL, assert_close_all, make_layer, run_both

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("H", [1, 7, 8, 9, 19, 64])
@pytest.mark.parametrize("T,N", [(1, 1), (2, 3), (37, 16), (37, 1)])
def test_sizes_match_reference(isa, cell, dtype, H, T, N):
    rng = np.random.default_rng(H * 1000 + T * 10 + N)
    C = 5
    layer = make_layer(cell, C, H, dtype=dtype, seed=H)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    mine, theirs = run_both(layer, x)
    assert_close_all(mine, theirs, TOL[dtype])


OPTIONS = {
    "2layers": dict(kw=dict(num_layers=2)),
    "bidirectional": dict(kw=dict(bidirectional=True)),
    "2layers_bi": dict(kw=dict(num_layers=2, bidirectional=True)),
    "3layers_bi_lengths": dict(kw=dict(num_layers=3, bidirectional=True), lengths=[3, 9, 1, 5]),
    "lengths": dict(kw={}, lengths=[4, 9, 1, 6]),
    "lengths_bi_hx": dict(kw=dict(bidirectional=True), lengths=[9, 2, 5, 9], hx=True),
    "batch_first": dict(kw=dict(batch_first=True, num_layers=2)),
    "batch_first_lengths": dict(kw=dict(batch_first=True, bidirectional=True), lengths=[2, 9, 9, 4]),
    "unbatched": dict(kw=dict(num_layers=2, bidirectional=True), unbatched=True),
    "unbatched_hx": dict(kw={}, unbatched=True, hx=True),
    "no_bias": dict(kw=dict(bias=False, num_layers=2)),
    "hx": dict(kw=dict(num_layers=2), hx=True),
    "dropout": dict(kw=dict(num_layers=3, dropout=0.4, bidirectional=True), dropout_seed=3),
    "dropout_lengths": dict(kw=dict(num_layers=2, dropout=0.5), lengths=[9, 3, 1, 7], dropout_seed=5),
}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_match_reference(isa, cell, dtype, option):
    spec = OPTIONS[option]
    rng = np.random.default_rng(len(option))
    T, N, C, H = 9, 4, 6, 8
    layer = make_layer(cell, C, H, dtype=dtype, seed=11, **spec["kw"])
    L, D = layer.num_layers, layer.num_directions
    if spec.get("unbatched"):
        x = rng.standard_normal((T, C))
        state_shape = (L * D, H)
    else:
        x = rng.standard_normal((N, T, C) if layer.batch_first else (T, N, C))
        state_shape = (L * D, N, H)
    x = x.astype(dtype)
    hx = None
    if spec.get("hx"):
        h0 = rng.standard_normal(state_shape).astype(dtype)
        hx = (h0, rng.standard_normal(state_shape).astype(dtype)) if cell == "lstm" else h0
    lengths = np.array(spec["lengths"]) if "lengths" in spec else None
    mine, theirs = run_both(layer, x, hx, lengths, rng_dropout=spec.get("dropout_seed"))
    assert_close_all(mine, theirs, TOL[dtype])
    if lengths is not None:  # outputs past each length are exactly zero
        out = mine["out"] if not layer.batch_first else mine["out"].swapaxes(0, 1)
        for n, ln in enumerate(lengths):
            assert not out[ln:, n].any()
