"""The one place that checks and coerces user input.

Messages name the function, the argument, what was given and what was expected, using the
letters of docs/design.md: T steps, N batch, C input features, H hidden units, L layers, D directions.
Arrays handed to the C++ core are C-contiguous and of the layer dtype; user arrays are never
written (copies are made when the layout has to change).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_BLAS_INT_MAX = 2**31 - 1


def as_dtype(dtype, where="dtype"):
    """Normalise a dtype argument; only float32 and float64 are supported."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{where}: {dtype!r} is not a dtype; expected float32 or float64") from exc
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"{where}: unsupported dtype {dt}; expected float32 or float64")
    return dt


def to_numpy(a):
    """ndarray view of a NumPy array, a torch tensor (CPU) or any array-like."""
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def float_array(a, dtype, where, name, device="cpu"):
    """The array `a` of exactly `dtype`: arrays of another dtype raise TypeError (no silent casts);
    Python sequences and scalars are converted to `dtype`. With device="cuda", arrays in GPU
    memory (``__cuda_array_interface__``: CuPy, torch CUDA tensors) are taken as device views."""
    from . import cuda
    if cuda.is_device_array(a) and not isinstance(a, np.ndarray):
        if device == "cuda":
            return cuda.as_device_array(a, dtype, where, name)
        if not type(a).__module__.startswith("torch"):
            raise TypeError(f"{where}: {name} is an array in GPU memory ({type(a).__name__}); use device='cuda' "
                            "or copy it to the host first")
    if isinstance(a, np.ndarray) or type(a).__module__.startswith("torch"):
        arr = to_numpy(a)
        if arr.dtype != dtype:
            raise TypeError(f"{where}: {name} has dtype {arr.dtype}, expected {dtype} (the layer's dtype); "
                            f"convert it explicitly, e.g. {name}.astype(np.{dtype})")
        return arr
    try:
        arr = np.asarray(a, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: {name} of type {type(a).__name__} cannot be read as a {dtype} array") from exc
    return arr


def expect_shape(arr, expected, where, name, letters):
    """Raise ValueError unless arr.shape == expected; `letters` labels each dimension."""
    if tuple(arr.shape) != tuple(expected):
        want = ", ".join(f"{k}={v}" for k, v in zip(letters, expected))
        raise ValueError(f"{where}: {name} has shape {tuple(arr.shape)}, expected ({want})")


def aligned_zeros(shape, dtype, align=64):
    """A zeroed C-contiguous array whose data starts on a cache line. NumPy aligns to 16 bytes
    only; a weight matrix whose rows straddle cache lines costs every vector load two lines (a
    streaming step, which reads the weights in place, took 2.2x as long on AVX-512)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(n + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n].view(dtype).reshape(shape)


def contiguous(arr):
    """C-contiguous array (a copy only when needed; never written by fastrnn). Device arrays
    (fastrnn.cuda.DeviceArray) stay on the device."""
    if not isinstance(arr, np.ndarray) and hasattr(arr, "contiguous"):
        return arr.contiguous()
    return np.ascontiguousarray(arr)


def check_positive_int(value, name, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{where}: {name} must be positive, got {value}")
    return int(value)


def check_dropout(p, where):
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{where}: dropout must be a float, got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{where}: dropout must be in [0, 1), got {p}")
    return float(p)


def lengths_array(lengths, N, T, where):
    """int64 [N] with 1 <= lengths[i] <= T."""
    arr = to_numpy(lengths)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{where}: lengths must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != N:
        raise ValueError(f"{where}: lengths has shape {tuple(arr.shape)}, expected (N={N},)")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (arr < 1) | (arr > T)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: lengths[{i}] = {arr[i]} is out of range; every length must be in [1, T={T}]")
    return arr


def check_blas_sizes(where, **dims):
    """The core uses 32-bit BLAS indices: every GEMM extent must fit in an int."""
    for name, value in dims.items():
        if value > _BLAS_INT_MAX:
            raise ValueError(f"{where}: {name} = {value} exceeds the supported maximum {_BLAS_INT_MAX} "
                             "(32-bit BLAS indices); split the batch or the sequence")


def check_bptt_clip(value, where):
    """None (off) or a positive finite float."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: bptt_clip must be None or a positive float, got {type(value).__name__}")
    if not (0.0 < float(value) < float("inf")):
        raise ValueError(f"{where}: bptt_clip must be a positive finite float, got {value}")
    return float(value)


def generator(rng, where):
    """A numpy.random.Generator from a Generator, an int seed (>= 0) or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"{where}: rng seed must be non-negative, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{where}: rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


# --- in-place access to arrays the caller owns (fastrnn.init, fastrnn.clip): NumPy arrays, or
# CPU torch tensors (changed through NumPy views of them, without importing torch).

def is_torch_tensor(a):
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def array_view(a, where, name, writable):
    """The ndarray behind `a` (no copy), float32 or float64, writeable when `writable`.

    Examples
    --------
    >>> a = np.zeros(3, np.float32)
    >>> array_view(a, "f", "x", writable=True) is a
    True
    """
    if is_torch_tensor(a):
        if a.device.type != "cpu":
            raise TypeError(f"{where}: {name} is a torch tensor on {a.device}; only CPU tensors can be "
                            "changed in place through NumPy (move it with .cpu() or use torch's own utilities)")
        try:
            arr = a.detach().numpy()
        except (TypeError, RuntimeError) as exc:
            raise TypeError(f"{where}: {name} is a torch tensor of dtype {a.dtype}; expected float32 or float64") from exc
    elif isinstance(a, np.ndarray):
        arr = a
    else:
        raise TypeError(f"{where}: {name} must be a NumPy array or a CPU torch tensor, got {type(a).__name__}")
    if arr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{where}: {name} has dtype {arr.dtype}; expected float32 or float64")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{where}: {name} is read-only and this function changes it in place")
    return arr


def real(value, name, where, *, positive=False, nonnegative=False):
    """`value` as a finite float (TypeError for non-numbers and bools, ValueError when out of range).

    Examples
    --------
    >>> real(2, "gain", "f")
    2.0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{where}: {name} must be positive, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{where}: {name} must be non-negative, got {value}")
    return value


def choice(value, name, options, where):
    """`value` if it is one of `options`, else ValueError listing them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{where}: unknown {name} {value!r}; expected one of {', '.join(map(repr, options))}")
    return value
