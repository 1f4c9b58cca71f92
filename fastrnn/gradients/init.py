"""Weight initializers for recurrent networks.

Every initializer comes as a pair: ``name(shape, ..., rng=None, dtype=np.float32)`` returns a new
array and ``name_(arr, ...)`` fills an existing array (NumPy, or a CPU torch tensor) in place and
returns it. Random ones take an explicit ``rng``: a ``numpy.random.Generator``, an int seed, or
None (fresh OS entropy). Samples are drawn in float64 and rounded to the target dtype, so the same
seed gives the same values (up to rounding) in float32 and float64.

Fans follow PyTorch's convention for a ``[out, in]`` weight: ``fan_in = in``, ``fan_out = out``
(times the receptive field ``prod(shape[2:])`` for ≥ 3-D); a 1-D shape ``[n]`` has
``fan_in = fan_out = n`` and a 0-D one 1 (Keras's rule; torch refuses them).

RNN-aware options:

* ``gates=G`` (every array initializer) splits a ``[G·H, K]`` array into G row blocks ``[H, K]``
  (one per gate, PyTorch's gate order) and initialises each block separately, with the fans of
  the block. A per-gate orthogonal ``W_hh`` is orthogonal block by block; a whole-matrix one is not.
* Layer-level functions (`forget_bias_`, `chrono_`, `identity_`, `apply_`) take a layer: any
  object with a ``params`` mapping of live arrays under torch's names (``weight_ih_l{k}``,
  ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, suffix ``_reverse``) and a
  ``hidden_size`` — `fastrnn.RNN`/`LSTM`/`GRU` and the `fastrnn.torch` modules. The cell comes
  from ``layer._cell()`` when present, else from the gate count ``weight_hh_l0.shape[0] // H``
  (4: LSTM, 3: GRU, 1: RNN with ``layer.nonlinearity``). They write in place and return the layer.

Examples
--------
>>> import numpy as np
>>> from fastrnn import init
>>> w = init.orthogonal((12, 3), gates=4, rng=0)       # four orthogonal 3×3 gate blocks
>>> bool(np.allclose(w[3:6].T @ w[3:6], np.eye(3), atol=1e-6))
True
"""
from __future__ import annotations

import inspect
import math
import numbers
import re
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from ..core import cells as _cells
from ..core import validation as V
from ..core.validation import array_view, choice as _choice, real as _real

__all__ = [
    "calculate_gain", "variance_scaling", "variance_scaling_",
    "uniform", "uniform_", "normal", "normal_", "trunc_normal", "trunc_normal_",
    "constant", "constant_", "zeros", "zeros_", "ones", "ones_", "eye", "eye_", "identity",
    "xavier_uniform", "xavier_uniform_", "xavier_normal", "xavier_normal_",
    "kaiming_uniform", "kaiming_uniform_", "kaiming_normal", "kaiming_normal_",
    "lecun_uniform", "lecun_uniform_", "lecun_normal", "lecun_normal_",
    "orthogonal", "orthogonal_",
    "forget_bias_", "chrono_", "identity_", "apply_", "PRESETS",
]

# Standard deviation of a standard normal truncated to [-2, 2]; dividing by it makes a
# truncated normal have the requested variance (Keras/TF VarianceScaling).
_TRUNC_STD = 0.87962566103423978
_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("uniform", "normal", "truncated_normal")


# --------------------------------------------------------------------------- argument checks

def _new(shape, dtype, where):
    """An uninitialised array of `shape` and `dtype` for the functional initializers to fill."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{where}: shape must be an int or a tuple of ints, got {type(shape).__name__}") from None
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{where}: shape must be an int or a tuple of ints, got {shape!r}")
        if d < 0:
            raise ValueError(f"{where}: shape {shape!r} has a negative dimension")
    return np.empty(tuple(int(d) for d in dims), V.as_dtype(dtype, f"{where}: dtype"))


def _blocks(arr, gates, where):
    """Row blocks [H, ...] of a [G·H, ...] array, one per gate (views)."""
    if gates is None:
        return [arr]
    gates = V.check_positive_int(gates, "gates", where)
    if arr.ndim == 0 or arr.shape[0] % gates:
        raise ValueError(f"{where}: gates={gates} needs a first dimension divisible by {gates} "
                         f"(shape [G·H, ...]), got shape {arr.shape}")
    h = arr.shape[0] // gates
    return [arr[g * h:(g + 1) * h] for g in range(gates)]


def _fill(where, arr, gates, sample):
    """Fill each gate block of `arr` (ndarray or tensor) with `sample(block_shape)`; return `arr`."""
    view = array_view(arr, where, "arr", writable=True)
    for block in _blocks(view, gates, where):
        if block.size:
            block[...] = sample(block.shape)
    return arr


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _truncated_normal(gen, shape, mean, std, a, b, where):
    """N(mean, std²) restricted to [a, b] by rejection: exact, and fast unless [a, b] is far in a tail."""
    lo, hi = (a - mean) / std, (b - mean) / std
    mass = 0.5 * (math.erf(hi / math.sqrt(2)) - math.erf(lo / math.sqrt(2)))
    if mass < 1e-3:
        raise ValueError(f"{where}: [a, b] = [{a}, {b}] holds only {mass:.2g} of the mass of N({mean}, {std}²); "
                         "choose bounds closer to the mean")
    z = gen.standard_normal(shape).reshape(-1)
    bad = np.flatnonzero((z < lo) | (z > hi))
    while bad.size:
        z[bad] = gen.standard_normal(bad.size)
        bad = bad[(z[bad] < lo) | (z[bad] > hi)]
    return np.clip(mean + std * z.reshape(shape), a, b)  # clip: rounding of mean + std·z


# --------------------------------------------------------------------------- gain and the core

def calculate_gain(nonlinearity, param=None):
    """Recommended gain for a nonlinearity (identical to ``torch.nn.init.calculate_gain``).

    ======================  ==========================================
    nonlinearity            gain
    ======================  ==========================================
    linear, conv*, sigmoid  1
    tanh                    5/3
    relu                    √2
    leaky_relu              √(2 / (1 + slope²)), slope = param or 0.01
    selu                    3/4
    ======================  ==========================================

    Reference: He et al., "Delving Deep into Rectifiers", ICCV 2015 (the ReLU gain).

    Examples
    --------
    >>> round(calculate_gain("leaky_relu", 0.2), 5)
    1.38675
    """
    where = "calculate_gain"
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else _real(param, "param (negative slope)", where)
        return math.sqrt(2.0 / (1 + slope ** 2))
    raise ValueError(f"{where}: unsupported nonlinearity {nonlinearity!r}; expected one of "
                     f"{', '.join(map(repr, linear + ('tanh', 'relu', 'leaky_relu', 'selu')))}")


def _variance_scaling(where, arr, scale, mode, distribution, rng, gates):
    scale = _real(scale, "scale", where, positive=True)
    _choice(mode, "mode", _MODES, where)
    _choice(distribution, "distribution", _DISTRIBUTIONS, where)
    gen = V.generator(rng, where)

    def sample(shape):
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            return gen.uniform(-limit, limit, size=shape)
        if distribution == "normal":
            return gen.normal(0.0, math.sqrt(var), size=shape)
        std = math.sqrt(var) / _TRUNC_STD
        return _truncated_normal(gen, shape, 0.0, std, -2 * std, 2 * std, where)

    return _fill(where, arr, gates, sample)


def variance_scaling(shape, scale=1.0, mode="fan_in", distribution="truncated_normal", *,
                     rng=None, dtype=np.float32, gates=None):
    """Keras ``VarianceScaling``: variance ``scale / max(1, fan)``; the core of the fan-based initializers.

    ``fan`` is ``fan_in``, ``fan_out`` or ``(fan_in + fan_out) / 2`` (``mode``), with PyTorch's
    ``[out, in]`` fans (see the module docstring) of each gate block when ``gates`` is given.

    * ``"uniform"``: U(−√(3·var), √(3·var));
    * ``"normal"``: N(0, var) (untruncated; TF-Keras's ``"normal"`` alias means truncated);
    * ``"truncated_normal"``: N(0, σ²) cut at ±2σ with σ = √var / 0.87962566103423978, so the
      truncated values have variance ``var`` (Keras/TF correction).

    ``xavier_*`` = (gain², fan_avg), ``kaiming_*`` = (gain², fan_in), ``lecun_*`` = (1, fan_in).

    Reference: Glorot & Bengio, AISTATS 2010; He et al., ICCV 2015; Keras ``VarianceScaling``.

    Examples
    --------
    >>> w = variance_scaling((400, 100), 2.0, "fan_in", "uniform", rng=0)
    >>> w.dtype, bool(np.abs(w).max() <= np.sqrt(3 * 2.0 / 100))
    (dtype('float32'), True)
    """
    where = "variance_scaling"
    return _variance_scaling(where, _new(shape, dtype, where), scale, mode, distribution, rng, gates)


def variance_scaling_(arr, scale=1.0, mode="fan_in", distribution="truncated_normal", *, rng=None, gates=None):
    """In-place `variance_scaling`: fills ``arr`` and returns it.

    Examples
    --------
    >>> w = np.empty((8, 4))
    >>> variance_scaling_(w, rng=0) is w
    True
    """
    return _variance_scaling("variance_scaling_", arr, scale, mode, distribution, rng, gates)


# --------------------------------------------------------------------------- simple distributions

def _uniform(where, arr, a, b, rng, gates):
    a, b = _real(a, "a", where), _real(b, "b", where)
    if a > b:
        raise ValueError(f"{where}: a must be <= b, got a={a}, b={b}")
    gen = V.generator(rng, where)
    return _fill(where, arr, gates, lambda shape: gen.uniform(a, b, size=shape))


def uniform(shape, a=0.0, b=1.0, *, rng=None, dtype=np.float32, gates=None):
    """U(a, b) (``torch.nn.init.uniform_``).

    Examples
    --------
    >>> w = uniform((2, 3), -0.1, 0.1, rng=0)
    >>> w.shape, bool(np.abs(w).max() <= 0.1)
    ((2, 3), True)
    """
    return _uniform("uniform", _new(shape, dtype, "uniform"), a, b, rng, gates)


def uniform_(arr, a=0.0, b=1.0, *, rng=None, gates=None):
    """In-place `uniform`: fills ``arr`` with U(a, b) and returns it.

    Examples
    --------
    >>> w = np.empty((2, 3), np.float32)
    >>> uniform_(w, rng=0) is w
    True
    """
    return _uniform("uniform_", arr, a, b, rng, gates)


def _normal(where, arr, mean, std, rng, gates):
    mean, std = _real(mean, "mean", where), _real(std, "std", where, nonnegative=True)
    gen = V.generator(rng, where)
    return _fill(where, arr, gates, lambda shape: gen.normal(mean, std, size=shape))


def normal(shape, mean=0.0, std=1.0, *, rng=None, dtype=np.float32, gates=None):
    """N(mean, std²) (``torch.nn.init.normal_``).

    Examples
    --------
    >>> normal((3, 2), std=0.01, rng=0).shape
    (3, 2)
    """
    return _normal("normal", _new(shape, dtype, "normal"), mean, std, rng, gates)


def normal_(arr, mean=0.0, std=1.0, *, rng=None, gates=None):
    """In-place `normal`.

    Examples
    --------
    >>> w = np.empty(5)
    >>> normal_(w, rng=0) is w
    True
    """
    return _normal("normal_", arr, mean, std, rng, gates)


def _trunc_normal(where, arr, mean, std, a, b, rng, gates):
    mean, std = _real(mean, "mean", where), _real(std, "std", where, positive=True)
    a, b = _real(a, "a", where), _real(b, "b", where)
    if a >= b:
        raise ValueError(f"{where}: a must be < b, got a={a}, b={b}")
    gen = V.generator(rng, where)
    return _fill(where, arr, gates, lambda shape: _truncated_normal(gen, shape, mean, std, a, b, where))


def trunc_normal(shape, mean=0.0, std=1.0, a=-2.0, b=2.0, *, rng=None, dtype=np.float32, gates=None):
    """N(mean, std²) restricted to [a, b] (``torch.nn.init.trunc_normal_``: a, b are absolute bounds
    and ``std`` is that of the untruncated normal). Sampled by rejection, exactly.

    Examples
    --------
    >>> w = trunc_normal((100, 10), std=0.5, a=-0.5, b=0.5, rng=0)
    >>> bool(w.min() >= -0.5 and w.max() <= 0.5)
    True
    """
    return _trunc_normal("trunc_normal", _new(shape, dtype, "trunc_normal"), mean, std, a, b, rng, gates)


def trunc_normal_(arr, mean=0.0, std=1.0, a=-2.0, b=2.0, *, rng=None, gates=None):
    """In-place `trunc_normal`.

    Examples
    --------
    >>> w = np.empty((4, 4), np.float32)
    >>> trunc_normal_(w, rng=0) is w
    True
    """
    return _trunc_normal("trunc_normal_", arr, mean, std, a, b, rng, gates)


def _constant(where, arr, value, gates):
    value = _real(value, "value", where)
    return _fill(where, arr, gates, lambda shape: value)


def constant(shape, value, *, dtype=np.float32, gates=None):
    """Every entry equal to ``value`` (``gates`` is accepted for uniformity; every block gets ``value``).

    Examples
    --------
    >>> constant(3, 0.5)
    array([0.5, 0.5, 0.5], dtype=float32)
    """
    return _constant("constant", _new(shape, dtype, "constant"), value, gates)


def constant_(arr, value, *, gates=None):
    """In-place `constant`.

    Examples
    --------
    >>> constant_(np.empty(2), 7.0)
    array([7., 7.])
    """
    return _constant("constant_", arr, value, gates)


def zeros(shape, *, dtype=np.float32, gates=None):
    """All zeros.

    Examples
    --------
    >>> zeros((1, 2))
    array([[0., 0.]], dtype=float32)
    """
    return _constant("zeros", _new(shape, dtype, "zeros"), 0.0, gates)


def zeros_(arr, *, gates=None):
    """In-place `zeros`.

    Examples
    --------
    >>> zeros_(np.ones(2))
    array([0., 0.])
    """
    return _constant("zeros_", arr, 0.0, gates)


def ones(shape, *, dtype=np.float32, gates=None):
    """All ones.

    Examples
    --------
    >>> ones(2, dtype=np.float64)
    array([1., 1.])
    """
    return _constant("ones", _new(shape, dtype, "ones"), 1.0, gates)


def ones_(arr, *, gates=None):
    """In-place `ones`.

    Examples
    --------
    >>> ones_(np.zeros(2))
    array([1., 1.])
    """
    return _constant("ones_", arr, 1.0, gates)


def _eye(where, arr, gain, gates):
    gain = _real(gain, "gain", where)

    def sample(shape):
        if len(shape) != 2:
            raise ValueError(f"{where}: needs a 2-D array (or 2-D gate blocks), got block shape {shape}")
        return gain * np.eye(*shape)

    return _fill(where, arr, gates, sample)


def eye(shape, gain=1.0, *, dtype=np.float32, gates=None):
    """``gain`` · I for a 2-D ``[rows, cols]`` shape (ones on the main diagonal when not square),
    per gate block with ``gates`` (``torch.nn.init.eye_``, Keras ``Identity``; alias `identity`).

    The in-place twin is `eye_`; ``identity_`` is the layer-level IRNN initializer.

    Examples
    --------
    >>> eye((4, 2), gates=2)
    array([[1., 0.],
           [0., 1.],
           [1., 0.],
           [0., 1.]], dtype=float32)
    """
    return _eye("eye", _new(shape, dtype, "eye"), gain, gates)


identity = eye


def eye_(arr, gain=1.0, *, gates=None):
    """In-place `eye`.

    Examples
    --------
    >>> eye_(np.empty((2, 2)), 0.5)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    return _eye("eye_", arr, gain, gates)


# --------------------------------------------------------------------------- fan-based families

def xavier_uniform(shape, *, gain=1.0, rng=None, dtype=np.float32, gates=None):
    """Glorot uniform: U(−b, b), ``b = gain·√(6 / (fan_in + fan_out))``.

    Reference: Glorot & Bengio, "Understanding the difficulty of training deep feedforward
    neural networks", AISTATS 2010.

    Examples
    --------
    >>> w = xavier_uniform((64, 32), rng=0)
    >>> bool(np.abs(w).max() <= np.sqrt(6 / 96))
    True
    """
    where = "xavier_uniform"
    gain = _real(gain, "gain", where, positive=True)
    return _variance_scaling(where, _new(shape, dtype, where), gain ** 2, "fan_avg", "uniform", rng, gates)


def xavier_uniform_(arr, *, gain=1.0, rng=None, gates=None):
    """In-place `xavier_uniform`.

    Examples
    --------
    >>> w = np.empty((8, 4), np.float32)
    >>> xavier_uniform_(w, rng=0) is w
    True
    """
    where = "xavier_uniform_"
    gain = _real(gain, "gain", where, positive=True)
    return _variance_scaling(where, arr, gain ** 2, "fan_avg", "uniform", rng, gates)


def xavier_normal(shape, *, gain=1.0, rng=None, dtype=np.float32, gates=None):
    """Glorot normal: N(0, σ²), ``σ = gain·√(2 / (fan_in + fan_out))`` (untruncated, as in torch).

    Reference: Glorot & Bengio, AISTATS 2010.

    Examples
    --------
    >>> xavier_normal((6, 4), rng=0).shape
    (6, 4)
    """
    where = "xavier_normal"
    gain = _real(gain, "gain", where, positive=True)
    return _variance_scaling(where, _new(shape, dtype, where), gain ** 2, "fan_avg", "normal", rng, gates)


def xavier_normal_(arr, *, gain=1.0, rng=None, gates=None):
    """In-place `xavier_normal`.

    Examples
    --------
    >>> w = np.empty((6, 4))
    >>> xavier_normal_(w, rng=0) is w
    True
    """
    where = "xavier_normal_"
    gain = _real(gain, "gain", where, positive=True)
    return _variance_scaling(where, arr, gain ** 2, "fan_avg", "normal", rng, gates)


def _kaiming(where, arr, a, mode, nonlinearity, distribution, rng, gates):
    try:
        gain = calculate_gain(nonlinearity, a)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return _variance_scaling(where, arr, gain ** 2, mode, distribution, rng, gates)


def kaiming_uniform(shape, a=0.0, *, mode="fan_in", nonlinearity="leaky_relu", rng=None,
                    dtype=np.float32, gates=None):
    """He uniform: U(−b, b), ``b = gain·√(3 / fan)``, gain = ``calculate_gain(nonlinearity, a)``
    (``torch.nn.init.kaiming_uniform_``; default gain √2 for leaky_relu with a = 0).

    Reference: He et al., "Delving Deep into Rectifiers", ICCV 2015.

    Examples
    --------
    >>> w = kaiming_uniform((32, 50), rng=0)
    >>> bool(np.abs(w).max() <= np.sqrt(2) * np.sqrt(3 / 50))
    True
    """
    where = "kaiming_uniform"
    return _kaiming(where, _new(shape, dtype, where), a, mode, nonlinearity, "uniform", rng, gates)


def kaiming_uniform_(arr, a=0.0, *, mode="fan_in", nonlinearity="leaky_relu", rng=None, gates=None):
    """In-place `kaiming_uniform`.

    Examples
    --------
    >>> w = np.empty((3, 3))
    >>> kaiming_uniform_(w, nonlinearity="relu", rng=0) is w
    True
    """
    return _kaiming("kaiming_uniform_", arr, a, mode, nonlinearity, "uniform", rng, gates)


def kaiming_normal(shape, a=0.0, *, mode="fan_in", nonlinearity="leaky_relu", rng=None,
                   dtype=np.float32, gates=None):
    """He normal: N(0, σ²), ``σ = gain / √fan`` (``torch.nn.init.kaiming_normal_``, untruncated).

    Reference: He et al., ICCV 2015.

    Examples
    --------
    >>> kaiming_normal((5, 2), mode="fan_out", rng=0).shape
    (5, 2)
    """
    where = "kaiming_normal"
    return _kaiming(where, _new(shape, dtype, where), a, mode, nonlinearity, "normal", rng, gates)


def kaiming_normal_(arr, a=0.0, *, mode="fan_in", nonlinearity="leaky_relu", rng=None, gates=None):
    """In-place `kaiming_normal`.

    Examples
    --------
    >>> w = np.empty((3, 3), np.float32)
    >>> kaiming_normal_(w, rng=0) is w
    True
    """
    return _kaiming("kaiming_normal_", arr, a, mode, nonlinearity, "normal", rng, gates)


def lecun_uniform(shape, *, rng=None, dtype=np.float32, gates=None):
    """LeCun uniform: U(−b, b), ``b = √(3 / fan_in)`` (Keras ``LecunUniform``).

    Reference: LeCun et al., "Efficient BackProp", 1998.

    Examples
    --------
    >>> bool(np.abs(lecun_uniform((10, 12), rng=0)).max() <= 0.5)
    True
    """
    where = "lecun_uniform"
    return _variance_scaling(where, _new(shape, dtype, where), 1.0, "fan_in", "uniform", rng, gates)


def lecun_uniform_(arr, *, rng=None, gates=None):
    """In-place `lecun_uniform`.

    Examples
    --------
    >>> w = np.empty((2, 2))
    >>> lecun_uniform_(w, rng=0) is w
    True
    """
    return _variance_scaling("lecun_uniform_", arr, 1.0, "fan_in", "uniform", rng, gates)


def lecun_normal(shape, *, rng=None, dtype=np.float32, gates=None):
    """LeCun normal: N(0, 1 / fan_in), untruncated (Keras's ``LecunNormal`` truncates; use
    ``variance_scaling(shape, 1.0, "fan_in", "truncated_normal")`` for that).

    Reference: LeCun et al., 1998; Klambauer et al., "Self-Normalizing Neural Networks", 2017.

    Examples
    --------
    >>> lecun_normal((2, 3), rng=0).dtype
    dtype('float32')
    """
    where = "lecun_normal"
    return _variance_scaling(where, _new(shape, dtype, where), 1.0, "fan_in", "normal", rng, gates)


def lecun_normal_(arr, *, rng=None, gates=None):
    """In-place `lecun_normal`.

    Examples
    --------
    >>> w = np.empty((2, 2))
    >>> lecun_normal_(w, rng=0) is w
    True
    """
    return _variance_scaling("lecun_normal_", arr, 1.0, "fan_in", "normal", rng, gates)


def _orthogonal(where, arr, gain, rng, gates):
    gain = _real(gain, "gain", where)
    gen = V.generator(rng, where)

    def sample(shape):
        if len(shape) < 2:
            raise ValueError(f"{where}: needs an array (or gate blocks) with at least 2 dimensions, "
                             f"got block shape {shape}")
        rows = shape[0]
        cols = math.prod(shape) // rows
        a = gen.standard_normal((rows, cols))
        if rows < cols:
            a = a.T
        q, r = np.linalg.qr(a)
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)  # sign fix: makes Q Haar-distributed
        if rows < cols:
            q = q.T
        return gain * q.reshape(shape)

    return _fill(where, arr, gates, sample)


def orthogonal(shape, *, gain=1.0, rng=None, dtype=np.float32, gates=None):
    """(Semi-)orthogonal matrix times ``gain``: Q of the QR decomposition of a Gaussian matrix,
    with the signs of diag(R) moved into Q so that Q is uniformly (Haar) distributed.

    The array is viewed as ``[rows, prod(rest)]``; with rows ≥ cols the columns are orthonormal
    (QᵀQ = I), otherwise the rows (QQᵀ = I). ``gates=G`` makes each ``[H, K]`` gate block
    orthogonal on its own — the usual choice for ``W_hh`` ``[G·H, H]``.
    Same construction and draws as ``torch.nn.init.orthogonal_``.

    Reference: Saxe et al., "Exact solutions to the nonlinear dynamics of learning in deep linear
    neural networks", ICLR 2014; Mezzadri, "How to generate random matrices from the classical
    compact groups", 2007 (the sign fix).

    Examples
    --------
    >>> q = orthogonal((3, 5), rng=0, dtype=np.float64)
    >>> bool(np.allclose(q @ q.T, np.eye(3)))
    True
    """
    return _orthogonal("orthogonal", _new(shape, dtype, "orthogonal"), gain, rng, gates)


def orthogonal_(arr, *, gain=1.0, rng=None, gates=None):
    """In-place `orthogonal`.

    Examples
    --------
    >>> w = np.empty((8, 2))
    >>> orthogonal_(w, gates=4, rng=0) is w
    True
    """
    return _orthogonal("orthogonal_", arr, gain, rng, gates)


# --------------------------------------------------------------------------- layer level

_PARAM = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr|weight_peephole|ln_ih_weight|ln_hh_weight|"
                    r"ln_c_weight|ln_c_bias|norm_weight|norm_bias|ln_hh_bias)_l(\d+)(_reverse)?")
_Layer = namedtuple("_Layer", "cell H G groups arrays")  # groups: one dict per layer/direction


def _layer(layer, where):
    """Parse the layer protocol: cell, H, gate count, per-(layer, direction) parameter groups."""
    params = getattr(layer, "params", None)
    if not isinstance(params, Mapping) or "weight_hh_l0" not in params or not hasattr(layer, "hidden_size"):
        raise TypeError(f"{where}: expected a recurrent layer (an object with a .params dict of arrays under "
                        f"torch names such as 'weight_hh_l0', and .hidden_size), got {type(layer).__name__}")
    H = V.check_positive_int(layer.hidden_size, "layer.hidden_size", where)
    groups, arrays = {}, []
    for name, value in params.items():
        m = _PARAM.fullmatch(name)
        if m is None:
            raise ValueError(f"{where}: unsupported parameter {name!r}; expected torch's weight_ih/weight_hh/"
                             "bias_ih/bias_hh/weight_hr_l{k}[_reverse] or fastrnn's weight_peephole/ln_*")
        arr = array_view(value, where, f"params[{name!r}]", writable=True)
        groups.setdefault((int(m[2]), m[3] or ""), {})[m[1]] = arr
        arrays.append(arr)
    first = groups[(0, "")]
    w = first["weight_hh"]
    if callable(getattr(layer, "_cell", None)):
        cell = layer._cell()
        G = _cells.gates(cell)
    else:  # a layer that only has the protocol: the cell from its gate count (the cell table)
        G = w.shape[0] // H
        by_gates = {_cells.gates(n): n for n in reversed(_cells.names())}
        cell = by_gates.get(G, "rnn_tanh")
        if G == 1:
            cell = f"rnn_{getattr(layer, 'nonlinearity', 'tanh')}"
    P = first["weight_hr"].shape[0] if "weight_hr" in first else H  # LSTMP: the state h has P units
    if w.shape != (G * H, P):
        counts = ", ".join(f"{_cells.gates(n)} ({n})" for n in _cells.names())
        raise ValueError(f"{where}: weight_hh_l0 has shape {w.shape}; expected (G·H, H) with H={H} (or "
                         f"(G·H, P) with projections) and G one of {counts}")
    return _Layer(cell, H, G, list(groups.values()), arrays)


def _needs_bias(lay, where):
    if "bias_ih" not in lay.groups[0]:
        raise ValueError(f"{where}: the layer has no biases (bias=False); this initializer sets biases")


def _layer_rng(layer, rng, where):
    own = getattr(layer, "rng", None)
    return own if rng is None and isinstance(own, np.random.Generator) else V.generator(rng, where)


def _zero_biases(lay):
    for g in lay.groups:
        for name in ("bias_ih", "bias_hh"):
            if name in g:
                g[name][...] = 0


def _variant_defaults(lay, gen):
    """The variants' extra parameters under the non-torch presets: LSTMP's W_hr Glorot uniform,
    peepholes 0 (the plain LSTM to start from), LayerNorm gains 1 and biases 0."""
    for g in lay.groups:
        if "weight_hr" in g:
            xavier_uniform_(g["weight_hr"], rng=gen)
        if "weight_peephole" in g:
            g["weight_peephole"][...] = 0
        for name in ("ln_ih_weight", "ln_hh_weight", "ln_c_weight"):
            if name in g:
                g[name][...] = 1
        if "ln_c_bias" in g:
            g["ln_c_bias"][...] = 0


def forget_bias_(layer, value=1.0):
    """Set the *effective* LSTM forget-gate bias ``b_ih[f] + b_hh[f]`` to ``value`` everywhere.

    Writes ``value`` into the forget block (rows H:2H) of every ``bias_ih`` and zeros the same block
    of ``bias_hh`` — writing it into both would double it (the two-bias trap of PyTorch/cuDNN
    layouts). Other gates are untouched.

    Reference: Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of Recurrent Network
    Architectures", ICML 2015 (forget bias 1); Gers et al. 2000.

    Examples
    --------
    >>> import fastrnn
    >>> lstm = forget_bias_(fastrnn.LSTM(3, 2, rng=0), 1.0)
    >>> (lstm.params["bias_ih_l0"] + lstm.params["bias_hh_l0"])[2:4]
    array([1., 1.], dtype=float32)
    """
    where = "forget_bias_"
    lay = _layer(layer, where)
    if lay.cell != "lstm":
        raise ValueError(f"{where}: only LSTM layers have a forget gate, got a {lay.cell!r} layer "
                         "(for a GRU, chrono_ acts on the update gate z)")
    _needs_bias(lay, where)
    value = _real(value, "value", where)
    H = lay.H
    for g in lay.groups:
        g["bias_ih"][H:2 * H] = value
        g["bias_hh"][H:2 * H] = 0
    return layer


def chrono_(layer, t_max, rng=None):
    """Chrono initialization: gate biases matched to dependencies of up to ``t_max`` steps.

    LSTM: effective forget bias ``b_f = log(u)``, ``u ~ U[1, t_max − 1]`` per unit, and input bias
    ``b_i = −b_f``; both written into ``bias_ih`` with the ``bias_hh`` blocks zeroed (so the
    effective bias ``b_ih + b_hh`` is exactly that). The forget gate then keeps its memory for
    about ``u`` steps.

    GRU (the analogue): in PyTorch's GRU ``h' = (1 − z)⊙n + z⊙h``, the update gate z keeps the old
    state, so it plays the forget gate's role and ``1 − z`` the input gate's: the effective
    ``b_z = log(u)``, ``u ~ U[1, t_max − 1]`` (rows H:2H; ``bias_hh`` block zeroed); r and n are
    untouched.

    Reference: Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018.

    Examples
    --------
    >>> import fastrnn
    >>> lstm = chrono_(fastrnn.LSTM(3, 4, rng=0), t_max=100, rng=0)
    >>> b = lstm.params["bias_ih_l0"]
    >>> bool(np.all(b[4:8] >= 0) and np.all(b[4:8] <= np.log(99)) and np.all(b[0:4] == -b[4:8]))
    True
    """
    where = "chrono_"
    lay = _layer(layer, where)
    if lay.cell not in ("lstm", "gru"):
        raise ValueError(f"{where}: needs an LSTM or GRU layer (gated), got a {lay.cell!r} layer")
    _needs_bias(lay, where)
    t_max = _real(t_max, "t_max", where)
    if t_max <= 2:
        raise ValueError(f"{where}: t_max must be > 2 (the longest dependency, in steps), got {t_max}")
    gen = _layer_rng(layer, rng, where)
    H = lay.H
    for g in lay.groups:
        b = np.log(gen.uniform(1.0, t_max - 1.0, size=H))
        g["bias_ih"][H:2 * H] = b          # LSTM f, GRU z (both gate 1)
        g["bias_hh"][H:2 * H] = 0
        if lay.cell == "lstm":
            g["bias_ih"][0:H] = -b          # input gate
            g["bias_hh"][0:H] = 0
    return layer


def identity_(layer, scale=1.0):
    """IRNN initialization: ``W_hh = scale·I`` (per gate block for gated cells), biases zero.

    Meant for a ReLU RNN (``fastrnn.RNN(..., nonlinearity="relu")``), where it makes the
    recurrence start as a pure memory; ``W_ih`` is left alone (the ``"identity"`` preset of
    `apply_` also draws it from N(0, 0.001²) as in the paper).

    Reference: Le, Jaitly & Hinton, "A Simple Way to Initialize Recurrent Networks of Rectified
    Linear Units", 2015.

    Examples
    --------
    >>> import fastrnn
    >>> rnn = identity_(fastrnn.RNN(2, 3, nonlinearity="relu", rng=0))
    >>> rnn.params["weight_hh_l0"]
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    where = "identity_"
    lay = _layer(layer, where)
    scale = _real(scale, "scale", where)
    for g in lay.groups:
        _eye(where, g["weight_hh"], scale, lay.G)
    _zero_biases(lay)
    return layer


# Presets: each takes (layer, parsed layer, generator, **options).

def _preset_torch(layer, lay, gen):
    k = 1.0 / math.sqrt(lay.H)
    for name, arr in zip(layer.params, lay.arrays):  # params order, so the draws match reset_parameters
        if name.startswith("ln_"):  # LayerNorm: torch.nn.LayerNorm's gain 1, bias 0
            arr[...] = 0 if name.startswith("ln_c_bias") else 1
        else:
            uniform_(arr, -k, k, rng=gen)


def _unit_forget_bias(layer, lay):
    if lay.cell == "lstm" and "bias_ih" in lay.groups[0]:
        forget_bias_(layer, 1.0)


def _preset_keras(layer, lay, gen):
    # Keras kernels are W_ihᵀ [C, G·H] and W_hhᵀ [H, G·H]. Glorot is symmetric in the fans, and
    # orthogonal on W_hh [G·H, H] (orthonormal columns) is Keras's orthogonal recurrent kernel
    # (orthonormal rows), transposed: same construction, same distribution.
    for g in lay.groups:
        xavier_uniform_(g["weight_ih"], rng=gen)
        orthogonal_(g["weight_hh"], rng=gen)
    _zero_biases(lay)
    _unit_forget_bias(layer, lay)
    _variant_defaults(lay, gen)


def _preset_haste(layer, lay, gen):
    for g in lay.groups:
        xavier_uniform_(g["weight_ih"], rng=gen, gates=lay.G)
        orthogonal_(g["weight_hh"], rng=gen, gates=lay.G)
    _zero_biases(lay)
    _unit_forget_bias(layer, lay)
    _variant_defaults(lay, gen)


def _preset_orthogonal(layer, lay, gen):
    for g in lay.groups:
        xavier_uniform_(g["weight_ih"], rng=gen)
        orthogonal_(g["weight_hh"], rng=gen, gates=lay.G)
    _zero_biases(lay)
    _variant_defaults(lay, gen)


def _preset_identity(layer, lay, gen, scale=1.0, input_std=0.001):
    input_std = _real(input_std, "input_std", "apply_", nonnegative=True)
    identity_(layer, scale)
    for g in lay.groups:
        normal_(g["weight_ih"], 0.0, input_std, rng=gen)
    _variant_defaults(lay, gen)


def _preset_chrono(layer, lay, gen, t_max=None):
    if t_max is None:
        raise ValueError("apply_: preset 'chrono' needs t_max=..., the longest dependency in steps")
    _preset_haste(layer, lay, gen)
    chrono_(layer, t_max, rng=gen)


_PRESETS = {"torch": _preset_torch, "keras": _preset_keras, "haste": _preset_haste,
            "orthogonal": _preset_orthogonal, "identity": _preset_identity, "chrono": _preset_chrono}
PRESETS = tuple(_PRESETS)  # the names apply_ knows


def apply_(layer, preset, rng=None, **options):
    """Initialise a whole layer (every layer and direction) with a named recipe.

    ==============  ==========================================================================
    preset          recipe
    ==============  ==========================================================================
    ``torch``       every parameter ~ U(−1/√H, 1/√H); the same draws as
                    ``layer.reset_parameters(rng)`` (PyTorch's default)
    ``keras``       ``W_ih``: Glorot uniform on the whole matrix; ``W_hh``: orthogonal on the whole
                    matrix — Keras stores the recurrent kernel as ``W_hhᵀ`` ``[H, G·H]`` with
                    orthonormal rows, i.e. ``W_hh`` has orthonormal columns (``W_hhᵀW_hh = I``),
                    its gate blocks are not orthogonal; zero biases; LSTM forget bias 1
                    (Keras ``unit_forget_bias``)
    ``haste``       per gate block: Glorot uniform ``W_ih``, orthogonal ``W_hh``; zero biases;
                    LSTM forget bias 1 (Haste's default)
    ``orthogonal``  per-gate orthogonal ``W_hh``, whole-matrix Glorot uniform ``W_ih``, zero biases
    ``identity``    `identity_` (``W_hh = scale·I``, biases 0) and ``W_ih ~ N(0, input_std²)``;
                    options ``scale=1.0``, ``input_std=0.001`` (Le et al. 2015)
    ``chrono``      ``haste`` then `chrono_` with the required option ``t_max``
    ==============  ==========================================================================

    ``rng``: Generator, seed or None (None: the layer's own ``rng`` when it has one).
    Returns the layer, changed in place.

    Reference: Glorot & Bengio 2010; Saxe et al. 2014; Jozefowicz et al. 2015; Le et al. 2015;
    Tallec & Ollivier 2018; Haste (lmnt-com/haste) and Keras defaults.

    Examples
    --------
    >>> import fastrnn
    >>> lstm = apply_(fastrnn.LSTM(3, 4, rng=0), "keras", rng=0)
    >>> w = lstm.params["weight_hh_l0"].astype(np.float64)
    >>> bool(np.allclose(w.T @ w, np.eye(4), atol=1e-6))
    True
    """
    where = "apply_"
    if not isinstance(preset, str) or preset not in _PRESETS:
        raise ValueError(f"{where}: unknown preset {preset!r}; expected one of {', '.join(map(repr, PRESETS))}")
    fn = _PRESETS[preset]
    allowed = list(inspect.signature(fn).parameters)[3:]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{where}: preset {preset!r} got unexpected option(s) {unknown}; "
                        f"it accepts {allowed or 'none'}")
    lay = _layer(layer, where)
    fn(layer, lay, _layer_rng(layer, rng, where), **options)
    return layer
