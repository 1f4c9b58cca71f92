"""No memory leaks: resident memory is flat over many forward/backward calls once warmed up.

Each calling thread keeps its last C++ scratch buffer (up to 256 MiB) for its next call — that is
reuse, not a leak, and the warm-up absorbs it. Leaks inside the extension are also checked by
LeakSanitizer and valgrind on a small run (.ci/sanitize, .ci/leaks; docs/guarantees.md).
"""
import gc
import os

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")

# Per call (float32) the cache alone is ~0.8 MB: leaking it, or an output, 150 times is >= 30 MB;
# the allowance covers allocator noise.
ALLOWANCE = 8 * 2**20  # measured growth without a leak: < 0.1 MB; leaking one output per call: 29 MB


def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def one_thread():
    """Leaks do not depend on the thread count; one thread keeps these loops fast on a busy box."""
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    yield
    fastrnn.set_num_threads(previous)


def growth(step, warmup=20, calls=150):
    for _ in range(warmup):
        step()
    before = rss()
    for _ in range(calls):
        step()
    return rss() - before


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((50, 8, 16)).astype(np.float32), rng.integers(1, 51, 8)


@pytest.mark.parametrize("cls,kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {"reset_after": False}),
                                    (fastrnn.RNN, {"nonlinearity": "relu"})])
def test_layer_training_and_inference_do_not_leak(data, cls, kw):
    x, lengths = data
    layer = cls(16, 64, num_layers=2, bidirectional=True, dropout=0.2, rng=0, **kw)
    twin = cls(16, 64, num_layers=2, bidirectional=True, rng=0, **kw).eval()

    def step():
        out, _ = layer(x, lengths=lengths)
        layer.backward(np.ones_like(out))
        twin(x)
        layer(x)  # a training forward whose cache is dropped unused by the next one
        with pytest.raises(ValueError):  # an error path, after the arrays were made
            layer(x, lengths=np.zeros(8, np.int64))
        layer.zero_grad()

    assert growth(step) <= ALLOWANCE


def test_functional_does_not_leak(data):
    x, lengths = data
    params = fastrnn.LSTM(16, 64, num_layers=2, dtype=np.float64, rng=0).params
    x64 = x.astype(np.float64)

    def step():
        out, _, ctx = F.lstm_forward(x64, params, lengths=lengths, num_layers=2, training=True)
        F.backward(ctx, np.ones_like(out), retain=True)
        F.backward(ctx, np.ones_like(out))
        F.lstm_forward(x64, params, num_layers=2)

    assert growth(step) <= ALLOWANCE


def test_torch_frontend_does_not_leak(data):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    x, lengths = data
    torch.set_num_threads(1)
    lstm = ft.LSTM(16, 64, num_layers=2, bidirectional=True, dropout=0.2)
    xt = torch.from_numpy(x)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths), enforce_sorted=False)

    def step():
        out, _ = lstm(xt.requires_grad_(True))
        out.sum().backward()
        out, _ = lstm(packed)
        out.data.sum().backward()
        with torch.no_grad():
            lstm(xt)
        lstm.zero_grad()

    assert growth(step) <= ALLOWANCE
