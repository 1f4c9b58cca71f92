"""Argument checks and array access shared by `fastrnn.init` and `fastrnn.clip`.

Both modules work in place on arrays the caller owns: NumPy arrays, or CPU torch tensors (the
`fastrnn.torch` modules expose their parameters as NumPy views of them). `array_view` returns an
ndarray sharing the caller's memory, so writes reach the original, without importing torch.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._validation import SUPPORTED_DTYPES


def is_torch_tensor(a):
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def array_view(a, where, name, writable):
    """The ndarray behind `a` (no copy), float32 or float64, writeable when `writable`.

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
