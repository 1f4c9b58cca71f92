"""PyTorch as a second oracle: load torch's state_dict, compare outputs, states, all gradients."""
import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")

TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}
OURS = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn_tanh": fastrnn.RNN, "rnn_relu": fastrnn.RNN}


def _kw(cell):
    return {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}


@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bi", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_matches_torch(isa, cell, dtype, layers, bi, batch_first, packed, with_hx):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    T, N, C, H = 7, 5, 6, 9
    tm = TORCH[cell](C, H, layers, bidirectional=bi, batch_first=batch_first, dtype=tdtype, **_kw(cell))
    fm = OURS[cell](C, H, layers, bidirectional=bi, batch_first=batch_first, dtype=dtype, **_kw(cell))
    fm.load_state_dict(tm.state_dict())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, T, C) if batch_first else (T, N, C)).astype(dtype)
    S = layers * (2 if bi else 1)
    lstm = cell == "lstm"
    h0 = rng.standard_normal((S, N, H)).astype(dtype)
    c0 = rng.standard_normal((S, N, H)).astype(dtype)
    lengths = np.array([3, 7, 1, 5, 7]) if packed else None

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    thx = ((h0t, c0t) if lstm else h0t) if with_hx else None
    if packed:
        seq = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
        out_p, st = tm(seq, thx)
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    else:
        out_t, st = tm(xt, thx)
    hx = ((h0, c0) if lstm else h0) if with_hx else None
    out, st_f = fm(x, hx, lengths)

    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_h = rng.standard_normal((S, N, H)).astype(dtype)
    g_c = rng.standard_normal((S, N, H)).astype(dtype)
    hn_t, hn = (st[0], st_f[0]) if lstm else (st, st_f)
    loss = (out_t * torch.tensor(g_out)).sum() + (hn_t * torch.tensor(g_h)).sum()
    if lstm:
        loss = loss + (st[1] * torch.tensor(g_c)).sum()
    loss.backward()
    grads = fm.backward(g_out, g_h, g_c) if lstm else fm.backward(g_out, g_h)

    tol = 1e-10 if dtype == np.float64 else 2e-5
    def close(a, b, what):
        b = b.detach().numpy()
        err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))
        assert err <= tol, f"{what}: {err:.3g}"
    close(out, out_t, "output")
    close(hn, hn_t, "h_n")
    if lstm:
        close(st_f[1], st[1], "c_n")
    close(grads[0], xt.grad, "grad_x")
    if with_hx:
        close(grads[1], h0t.grad, "grad_h0")
        if lstm:
            close(grads[2], c0t.grad, "grad_c0")
    for name, p in tm.named_parameters():
        close(fm.grads[name], p.grad, f"grad {name}")


def test_state_dict_round_trip_with_torch():
    tm = torch.nn.LSTM(4, 3, 2, bidirectional=True)
    fm = fastrnn.LSTM(4, 3, 2, bidirectional=True)
    assert list(fm.state_dict()) == list(tm.state_dict())
    assert all(fm.params[k].shape == tuple(v.shape) for k, v in tm.state_dict().items())
    fm.load_state_dict(tm.state_dict())
    tm2 = torch.nn.LSTM(4, 3, 2, bidirectional=True)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in fm.state_dict().items()})
    for k, v in tm.state_dict().items():
        assert torch.equal(v, tm2.state_dict()[k])
