"""Seeded toy sequence tasks for recurrent networks, each with its chance-level baseline.

Every generator takes ``rng`` (a ``numpy.random.Generator`` or a seed; the same seed gives the
same batch) and returns arrays in fastrnn's time-major layout ``[T, N, C]``. Each task has a
``*_baseline`` function: the loss of the best predictor that ignores what the task tests
(memory or dynamics) — a trained model is only learning the task once it is clearly below it.

- `sine` — next-value prediction, ``x, y [T, N, 1]``, `losses.mse`; baseline `sine_baseline`.
- `adding` — the adding problem, ``x [T, N, 2]``, ``y [N, 1]`` (and ``lengths`` with
  ``min_length``), `losses.mse`; baseline `adding_baseline` = 1/6.
- `copy` — the copy/memory task, ``x [S, N, K+2]``, integer ``y [S, N]``,
  `losses.cross_entropy`; baseline `copy_baseline` (``log K`` per recalled symbol).

Examples
--------
>>> import fastrnn
>>> x, y = fastrnn.tasks.adding(T=50, N=4, rng=0)
>>> x.shape, y.shape, round(fastrnn.tasks.adding_baseline(), 4)
((50, 4, 2), (4, 1), 0.1667)
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..core import validation as V

__all__ = ["sine", "sine_baseline", "adding", "adding_baseline", "copy", "copy_baseline"]


def _freq(freq, where):
    try:
        lo, hi = (float(f) for f in freq)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: freq must be a pair (low, high) of angular frequencies, got {freq!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"{where}: freq = {freq!r}; expected 0 < low <= high (radians per step)")
    return lo, hi


def _noise(noise, where):
    if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, numbers.Real):
        raise TypeError(f"{where}: noise must be a real number, got {type(noise).__name__}")
    if not noise >= 0:
        raise ValueError(f"{where}: noise must be >= 0, got {noise!r}")
    return float(noise)


def sine(T, N, rng=None, *, freq=(0.05, 0.25), noise=0.0, dtype=np.float32):
    """Next-value prediction on sine waves: ``x[t] = s(t)``, ``y[t] = s(t + 1)``.

    ``s(t) = sin(ω t + φ) + ε_t`` per sequence, with ``ω ~ U(freq)`` (radians per step),
    ``φ ~ U(0, 2π)`` and Gaussian noise ``ε_t ~ N(0, noise²)``. Returns ``x, y`` of shape
    ``[T, N, 1]``. A model must infer each wave's frequency and phase from its past: see
    `sine_baseline` for what copying the input or predicting 0 achieve.

    Examples
    --------
    >>> import fastrnn
    >>> x, y = fastrnn.tasks.sine(T=20, N=3, rng=0)
    >>> x.shape, bool((x[1:] == y[:-1]).all())      # y is x shifted by one step
    ((20, 3, 1), True)
    """
    where = "tasks.sine"
    T = V.check_positive_int(T, "T", where)
    N = V.check_positive_int(N, "N", where)
    lo, hi = _freq(freq, where)
    noise = _noise(noise, where)
    dtype = V.as_dtype(dtype, f"{where}: dtype")
    gen = V.generator(rng, where)
    omega = gen.uniform(lo, hi, size=(1, N, 1))
    phase = gen.uniform(0.0, 2 * np.pi, size=(1, N, 1))
    t = np.arange(T + 1, dtype=np.float64)[:, None, None]
    wave = np.sin(omega * t + phase)
    if noise:
        wave += noise * gen.standard_normal(wave.shape)
    wave = wave.astype(dtype)
    return wave[:-1].copy(), wave[1:].copy()


def sine_baseline(freq=(0.05, 0.25), noise=0.0, predictor="zero"):
    """Expected MSE of two memoryless predictors on `sine` (exact, per step):

    - ``"zero"`` (predict the mean 0): ``E[sin²] + noise² = 1/2 + noise²``.
    - ``"last"`` (predict ``y[t] = x[t]``): ``E[1 − cos ω] + 2·noise²
      = 1 − (sin ω₁ − sin ω₀)/(ω₁ − ω₀) + 2·noise²`` for ``ω ~ U(ω₀, ω₁)``
      (≈ 0.0129 for the default frequencies). This is the bar a trained model must beat.

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.tasks.sine_baseline(), round(fastrnn.tasks.sine_baseline(predictor="last"), 5)
    (0.5, 0.01288)
    """
    where = "tasks.sine_baseline"
    lo, hi = _freq(freq, where)
    noise = _noise(noise, where)
    if predictor == "zero":
        return 0.5 + noise**2
    if predictor == "last":
        mean_cos = math.cos(lo) if hi == lo else (math.sin(hi) - math.sin(lo)) / (hi - lo)
        return 1.0 - mean_cos + 2 * noise**2
    raise ValueError(f"{where}: predictor must be 'zero' or 'last', got {predictor!r}")


def adding(T, N, rng=None, *, min_length=None, dtype=np.float32):
    """The adding problem (Hochreiter & Schmidhuber 1997): add the two marked numbers of a long sequence.

    Input ``x [T, N, 2]``: channel 0 holds values ``~ U(0, 1)``, channel 1 is 1 at two marked
    steps and 0 elsewhere; the target ``y [N, 1]`` is the sum of the two marked values. The first
    marker is uniform over the first half of each sequence (steps ``[0, ⌊L/2⌋)``), the second over
    the second half (``[⌊L/2⌋, L)``), so the network must carry a value across ~L/2 steps on
    average. With ``min_length``, lengths ``L ~ U{min_length, ..., T}`` are drawn per sequence,
    steps past ``L`` are zero and ``(x, y, lengths)`` is returned (use `fastrnn.LastStep` to
    read the output at each sequence's last step); otherwise ``L = T``. Needs ``L >= 2``.

    Chance level: `adding_baseline` (1/6).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> x, y = fastrnn.tasks.adding(T=10, N=2, rng=0)
    >>> x[:, :, 1].sum(axis=0), bool(np.allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=0)))
    (array([2., 2.], dtype=float32), True)
    """
    where = "tasks.adding"
    T = V.check_positive_int(T, "T", where)
    N = V.check_positive_int(N, "N", where)
    dtype = V.as_dtype(dtype, f"{where}: dtype")
    if min_length is not None:
        min_length = V.check_positive_int(min_length, "min_length", where)
    low = T if min_length is None else min_length
    if low < 2 or low > T:
        raise ValueError(f"{where}: sequences need 2 <= length <= T; got T={T}, min_length={min_length}")
    gen = V.generator(rng, where)
    lengths = np.full(N, T, np.int64) if min_length is None else gen.integers(low, T + 1, size=N)
    half = lengths // 2
    first = (gen.random(N) * half).astype(np.int64)                    # U{0, ..., half-1}
    second = half + (gen.random(N) * (lengths - half)).astype(np.int64)  # U{half, ..., L-1}
    values = gen.random((T, N))
    values[np.arange(T)[:, None] >= lengths[None, :]] = 0.0
    marks = np.zeros((T, N))
    cols = np.arange(N)
    marks[first, cols] = 1.0
    marks[second, cols] = 1.0
    x = np.stack([values, marks], axis=-1).astype(dtype)
    y = (values[first, cols] + values[second, cols])[:, None].astype(dtype)
    return (x, y) if min_length is None else (x, y, lengths)


def adding_baseline():
    """Chance level of `adding`: MSE 1/6 ≈ 0.1667.

    Without memory the best prediction is the mean sum ``E[u₁ + u₂] = 1``, whose MSE is
    ``Var(u₁ + u₂) = 2 · Var(U(0, 1)) = 2/12 = 1/6`` (exact for this sampling, any length).

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.tasks.adding_baseline()
    0.16666666666666666
    """
    return 1.0 / 6.0


def copy(delay, N, rng=None, *, n_symbols=8, length=10, dtype=np.float32):
    """The copy (memory) task (Hochreiter & Schmidhuber 1997; Arjovsky, Shah & Bengio 2016):
    read ``length`` symbols, wait ``delay`` steps, then write them back.

    ``S = 2·length + delay`` steps. Classes: 0 = blank, 1..K = symbols (K = ``n_symbols``),
    K+1 = the "go" delimiter (input only). Input ``x [S, N, K+2]`` is one-hot: the symbols
    (uniform over 1..K) at steps ``[0, length)``, blanks, the delimiter at step
    ``length + delay − 1``, blanks. Target ``y [S, N]`` (int64 class indices in ``[0, K]``, so
    the head has K+1 outputs): blank everywhere except the symbols again at the last ``length``
    steps. Train with `fastrnn.losses.cross_entropy` on logits ``[S, N, K+1]``.

    Chance level: `copy_baseline` (``log K`` per recalled symbol).

    Examples
    --------
    >>> import fastrnn
    >>> x, y = fastrnn.tasks.copy(delay=5, N=2, rng=0, n_symbols=4, length=3)
    >>> x.shape, y.shape, bool((x[:3].argmax(-1) == y[-3:]).all()), int(x[7].argmax(-1)[0])
    ((11, 2, 6), (11, 2), True, 5)
    """
    where = "tasks.copy"
    delay = V.check_positive_int(delay, "delay", where)
    N = V.check_positive_int(N, "N", where)
    K = V.check_positive_int(n_symbols, "n_symbols", where)
    length = V.check_positive_int(length, "length", where)
    dtype = V.as_dtype(dtype, f"{where}: dtype")
    gen = V.generator(rng, where)
    S = 2 * length + delay
    symbols = gen.integers(1, K + 1, size=(length, N))
    inputs = np.zeros((S, N), np.int64)
    inputs[:length] = symbols
    inputs[length + delay - 1] = K + 1
    y = np.zeros((S, N), np.int64)
    y[S - length:] = symbols
    x = np.eye(K + 2, dtype=dtype)[inputs]
    return x, y


def copy_baseline(delay, n_symbols=8, length=10):
    """Chance level of `copy`: mean cross-entropy per step ``length · log K / (2·length + delay)``.

    A memoryless model can still output blank wherever the target is blank (it can count
    steps), with zero loss, but at each of the ``length`` recall steps it can only spread its
    probability uniformly over the K symbols: cross-entropy ``log K`` there, averaged over all
    ``S = 2·length + delay`` steps (Arjovsky, Shah & Bengio 2016: ``10 log 8 / (T + 20)``).

    Examples
    --------
    >>> import math, fastrnn
    >>> fastrnn.tasks.copy_baseline(delay=10, n_symbols=8, length=10) == 10 * math.log(8) / 30
    True
    """
    where = "tasks.copy_baseline"
    delay = V.check_positive_int(delay, "delay", where)
    K = V.check_positive_int(n_symbols, "n_symbols", where)
    length = V.check_positive_int(length, "length", where)
    return length * math.log(K) / (2 * length + delay)
