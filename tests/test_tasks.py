"""fastrnn.tasks: structure, seeding, and each documented chance-level baseline checked numerically."""
import math

import numpy as np
import pytest

from fastrnn import losses, tasks


@pytest.mark.parametrize("make", [lambda r, dt: tasks.sine(20, 3, r, noise=0.1, dtype=dt),
                                  lambda r, dt: tasks.adding(20, 3, r, min_length=5, dtype=dt),
                                  lambda r, dt: tasks.copy(5, 3, r, dtype=dt)], ids=["sine", "adding", "copy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seeded_and_typed(make, dtype):
    a, b, c = make(7, dtype), make(7, dtype), make(8, dtype)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, w) for u, w in zip(a, c))
    assert a[0].dtype == dtype and a[0].flags.c_contiguous
    gen = np.random.default_rng(3)
    assert not np.array_equal(make(gen, dtype)[0], make(gen, dtype)[0])   # a Generator advances


def test_sine_structure_and_baselines():
    x, y = tasks.sine(50, 20000, rng=0, dtype=np.float64)
    assert x.shape == y.shape == (50, 20000, 1)
    np.testing.assert_array_equal(x[1:], y[:-1])
    # predicting 0: E[sin²] = 1/2 (phase uniform); the per-sequence means are independent
    per_seq = (y**2).mean(axis=(0, 2))
    assert abs(per_seq.mean() - tasks.sine_baseline()) < 4 * per_seq.std() / math.sqrt(per_seq.size)
    per_seq = ((y - x) ** 2).mean(axis=(0, 2))
    assert abs(per_seq.mean() - tasks.sine_baseline(predictor="last")) < 4 * per_seq.std() / math.sqrt(per_seq.size)
    xn, yn = tasks.sine(50, 20000, rng=1, noise=0.2, dtype=np.float64)
    per_seq = ((yn - xn) ** 2).mean(axis=(0, 2))
    expected = tasks.sine_baseline(noise=0.2, predictor="last")
    assert expected == pytest.approx(tasks.sine_baseline(predictor="last") + 0.08)
    assert abs(per_seq.mean() - expected) < 4 * per_seq.std() / math.sqrt(per_seq.size)
    assert tasks.sine_baseline(freq=(0.1, 0.1), predictor="last") == pytest.approx(1 - math.cos(0.1))


def test_adding_structure_and_baseline():
    T, N = 30, 200000
    x, y = tasks.adding(T, N, rng=0, dtype=np.float64)
    assert x.shape == (T, N, 2) and y.shape == (N, 1)
    marks = x[:, :, 1]
    assert (marks.sum(axis=0) == 2).all() and set(np.unique(marks)) == {0.0, 1.0}
    assert (marks[:T // 2].sum(axis=0) == 1).all()            # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(axis=0), rtol=1e-15)
    assert 0 <= x[:, :, 0].min() and x[:, :, 0].max() < 1
    # chance level: predicting the mean 1 has MSE Var(u1 + u2) = 1/6
    sq = (y[:, 0] - 1.0) ** 2
    assert abs(sq.mean() - tasks.adding_baseline()) < 4 * sq.std() / math.sqrt(N)
    assert losses.mse(np.ones_like(y), y)[0] == pytest.approx(tasks.adding_baseline(), abs=4 * sq.std() / math.sqrt(N))
    assert abs(y.mean() - 1.0) < 4 * y.std() / math.sqrt(N)   # 1 is the best constant prediction


def test_adding_variable_lengths():
    x, y, lengths = tasks.adding(20, 500, rng=0, min_length=6)
    assert lengths.dtype == np.int64 and lengths.min() >= 6 and lengths.max() <= 20
    assert len(np.unique(lengths)) > 5
    t = np.arange(20)[:, None]
    assert not x[t >= lengths].any()                           # padding is zero
    marks = x[:, :, 1]
    first, second = marks.argmax(axis=0), 19 - marks[::-1].argmax(axis=0)
    assert (first < lengths // 2).all() and (second >= lengths // 2).all() and (second < lengths).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(axis=0), rtol=1e-6)


def test_copy_structure_and_baseline():
    delay, K, L, N = 12, 6, 5, 4000
    x, y = tasks.copy(delay, N, rng=0, n_symbols=K, length=L)
    S = 2 * L + delay
    assert x.shape == (S, N, K + 2) and y.shape == (S, N) and y.dtype == np.int64
    inputs = x.argmax(-1)
    assert (x.sum(-1) == 1).all()                              # one-hot
    np.testing.assert_array_equal(y[-L:], inputs[:L])          # recall = the symbols read
    assert not y[:-L].any() and (y[-L:] >= 1).all() and (y[-L:] <= K).all()
    assert (inputs[L + delay - 1] == K + 1).all()              # the delimiter
    assert not inputs[L:L + delay - 1].any() and not inputs[L + delay:].any()
    # the memoryless predictor: certain blank where the target is blank, uniform symbols at recall
    logits = np.full((S, N, K + 1), -60.0)
    logits[:-L, :, 0] = 60.0
    logits[-L:, :, 1:] = 0.0
    value = losses.cross_entropy(logits, y)[0]
    assert value == pytest.approx(tasks.copy_baseline(delay, n_symbols=K, length=L), rel=1e-12)
    recall = losses.cross_entropy(logits[-L:], y[-L:])[0]
    assert recall == pytest.approx(math.log(K), rel=1e-12)
    counts = np.bincount(y[-L:].ravel(), minlength=K + 1)[1:]  # symbols are uniform
    assert np.abs(counts / counts.sum() - 1 / K).max() < 0.01


def test_bad_input():
    with pytest.raises(ValueError, match="T must be positive, got 0"):
        tasks.sine(0, 2)
    with pytest.raises(ValueError, match="expected 0 < low <= high"):
        tasks.sine(5, 2, freq=(0.3, 0.1))
    with pytest.raises(ValueError, match="noise must be >= 0, got -1"):
        tasks.sine(5, 2, noise=-1)
    with pytest.raises(TypeError, match="noise must be a real number, got str"):
        tasks.sine(5, 2, noise="0.1")
    with pytest.raises(ValueError, match="predictor must be 'zero' or 'last'"):
        tasks.sine_baseline(predictor="mean")
    with pytest.raises(ValueError, match="sequences need 2 <= length <= T; got T=10, min_length=11"):
        tasks.adding(10, 2, min_length=11)
    with pytest.raises(ValueError, match="sequences need 2 <= length <= T; got T=1"):
        tasks.adding(1, 2)
    with pytest.raises(TypeError, match="n_symbols must be an int"):
        tasks.copy(3, 2, n_symbols=2.5)
    with pytest.raises(TypeError, match="unsupported dtype int32"):
        tasks.copy(3, 2, dtype=np.int32)
