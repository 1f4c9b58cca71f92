"""fastrnn.cuda: the optional CUDA backend.

fastrnn's forward and BPTT also run on an NVIDIA GPU when fastrnn was built with ``nvcc``
(the extension ``fastrnn._cuda``, see docs/cuda.md): the same driver as on the CPU
(hoisted input GEMM, a fused recurrent-product + cell kernel per step or one persistent kernel
for all steps at small batch, weight-gradient GEMMs after the loop), the same cell equations
(csrc/cells compiled for the device), the same weight and cache layouts. GEMMs are fastrnn's own
tiled kernels: cuBLAS is not used.

Front ends:

- NumPy layers and `fastrnn.functional`: ``device="cuda"``. NumPy arrays are copied to the GPU and
  the results back; arrays exposing ``__cuda_array_interface__`` (CuPy, or `DeviceArray`) are read
  in place. The training cache stays on the GPU until `backward`.
- `fastrnn.torch` modules on CUDA tensors: zero-copy, on torch's current stream.

Without a usable backend (not built, no driver, no GPU) `is_available` is False, `reason` says
why, and asking for ``device="cuda"`` raises RuntimeError with that reason. ``import fastrnn``
never needs CUDA: the runtime is linked statically and only initialised on first use.

Examples
--------
>>> import fastrnn
>>> ok = fastrnn.cuda.is_available()
>>> ok == (fastrnn.cuda.reason() is None) == (fastrnn.cuda.device_count() > 0)
True
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import _C

__all__ = ["is_available", "reason", "device_count", "info", "check_device", "DeviceArray", "empty", "to_device"]

_DEVICES = ("cpu", "cuda")
_NOT_BUILT = ("fastrnn was built without its CUDA backend (the extension fastrnn._cuda is missing: nvcc was not "
              "found or failed when fastrnn was built, or FASTRNN_CUDA=0); reinstall with nvcc on PATH, e.g. "
              "FASTRNN_CUDA=1 pip install .")

# The backend module (fastrnn._cuda; tests install the host emulator build here), whether the
# import was tried, and (device count, why) once asked.
_backend = None
_loaded = False
_status = None


def _module():
    """The backend module, or None when fastrnn._cuda was not built."""
    global _backend, _loaded
    if not _loaded:
        _loaded = True
        try:
            from .. import _cuda
        except ImportError:
            _cuda = None
        _backend = _cuda
    return _backend


def reason():
    """None when the CUDA backend can be used, else a sentence saying why not.

    Examples
    --------
    >>> import fastrnn
    >>> why = fastrnn.cuda.reason()
    >>> why is None or isinstance(why, str)
    True
    """
    global _status
    mod = _module()
    if mod is None:
        return _NOT_BUILT
    if _status is None:
        n, why = mod.device_count()
        _status = (int(n), why or "no CUDA device is visible")
    return None if _status[0] > 0 else f"no usable CUDA device: {_status[1]}"


def is_available():
    """True when fastrnn was built with CUDA and a GPU with a working driver is visible.

    Examples
    --------
    >>> import fastrnn
    >>> isinstance(fastrnn.cuda.is_available(), bool)
    True
    """
    return reason() is None


def device_count():
    """Number of usable CUDA devices (0 without a usable backend).

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.cuda.device_count() >= 0
    True
    """
    return _status[0] if reason() is None else 0


def info():
    """What the CUDA backend is and can do here, as a dict: ``built``, ``backend`` ("cuda", or
    "emulator" in tests), ``runtime_version`` / ``driver_version`` (e.g. 13000; 0: none),
    ``devices`` (list of ``(name, compute capability)``) and ``reason`` (None when usable).

    Examples
    --------
    >>> import fastrnn
    >>> sorted(fastrnn.cuda.info())
    ['backend', 'built', 'devices', 'driver_version', 'reason', 'runtime_version']
    """
    mod = _module()
    why = reason()
    out = dict(built=mod is not None, backend=None, runtime_version=0, driver_version=0, devices=[], reason=why)
    if mod is not None:
        out.update(backend=mod.backend(), runtime_version=mod.runtime_version(), driver_version=mod.driver_version())
        if why is None:
            out["devices"] = [(mod.device_name(i), mod.device_capability(i)) for i in range(device_count())]
    return out


def check_device(device, where):
    """Validate a ``device`` argument: "cpu" or "cuda". "cuda" raises RuntimeError saying why
    when the backend is not usable. Returns the device string.

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.cuda.check_device("cpu", "LSTM")
    'cpu'
    """
    if not isinstance(device, str):
        raise TypeError(f"{where}: device must be a str ('cpu' or 'cuda'), got {type(device).__name__}")
    if device not in _DEVICES:
        raise ValueError(f"{where}: unknown device {device!r}; expected 'cpu' or 'cuda'")
    if device == "cuda":
        _require(where)
    return device


# Cells the CUDA driver does not run (csrc/cuda/driver_impl.cuh refuses them too).
_CPU_ONLY_CELLS = ("ligru", "sligru")


def check_plain(where, cell=None, **options):
    """NotImplementedError naming the cell variants and regularizers set in `options` (the CUDA
    backend runs the plain cells: LSTM, GRU both ways, RNN tanh/relu, with every option of the
    stack: layers, directions, lengths, dropout between layers, bptt_clip, diagnostics)."""
    on = [name for name, value in options.items() if value is not None and value is not False and value != 0]
    if cell in _CPU_ONLY_CELLS:
        on.insert(0, f"the {cell} cell")
    if on:
        raise NotImplementedError(f"{where}: device='cuda' runs the plain cells only; {', '.join(on)} "
                                  "run on the CPU for now (device='cpu')")


def _require(where):
    why = reason()
    if why is not None:
        raise RuntimeError(f"{where}: device='cuda' needs fastrnn's CUDA backend, which cannot be used here: {why}")
    return _backend


# ---------------------------------------------------------------- device memory

class _Allocation:
    """Owns one device allocation; freed when the last array using it goes away."""

    __slots__ = ("ptr", "_free")

    def __init__(self, mod, nbytes):
        self.ptr = mod.malloc(int(nbytes))
        self._free = mod.free

    def __del__(self):
        self._free(self.ptr)


def _is_c_contiguous(shape, strides, itemsize):
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n > 1 and s != expect:
            return False
        expect *= n
    return True


class DeviceArray:
    """An array in GPU memory: shape, dtype, byte strides and a device address (``ptr``).

    What fastrnn allocates on the GPU, and the view it takes of other libraries' device arrays
    (`from_interface`: CuPy, torch, Numba; zero-copy). It exposes ``__cuda_array_interface__``
    (version 3), so CuPy, Numba or torch can wrap it without a copy, and `get` copies it to a
    NumPy array. Work fastrnn enqueues runs on the default stream.

    Parameters
    ----------
    ptr : int
        Device address of element 0.
    shape : tuple of int
    dtype : numpy dtype
    strides : tuple of int, optional
        Byte strides; None for C-contiguous.
    owner : object, optional
        Kept alive as long as the array (the allocation or the array it views).
    """

    __slots__ = ("ptr", "shape", "dtype", "strides", "_owner", "__weakref__")

    def __init__(self, ptr, shape, dtype, strides=None, owner=None):
        self.ptr = int(ptr)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if strides is None:
            strides, step = [], self.dtype.itemsize
            for n in reversed(self.shape):
                strides.insert(0, step)
                step *= max(n, 1)
        self.strides = tuple(int(s) for s in strides)
        self._owner = owner

    @classmethod
    def from_interface(cls, obj):
        """Zero-copy view of an object exposing ``__cuda_array_interface__`` (untested with CuPy).

        Version 3's ``stream`` names the stream whose pending work writes the data (1: the legacy
        default stream, 2: per-thread default, else a ``cudaStream_t``). fastrnn's work runs on the
        default stream, which need not wait for other streams, so that stream is synchronized here
        first, as the interface requires of a consumer."""
        ai = obj.__cuda_array_interface__
        stream = ai.get("stream")
        if stream is not None:
            if isinstance(stream, bool) or not isinstance(stream, numbers.Integral) or stream == 0:
                raise ValueError(f"__cuda_array_interface__: stream must be None or a nonzero int (0 is disallowed "
                                 f"by the interface), got {stream!r}")
            _require("DeviceArray.from_interface").synchronize(int(stream))
        ptr = ai["data"][0]
        dtype = np.dtype(ai["typestr"])
        return cls(ptr, ai["shape"], dtype, ai.get("strides"), owner=obj)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    @property
    def is_c_contiguous(self):
        return _is_c_contiguous(self.shape, self.strides, self.dtype.itemsize)

    @property
    def __cuda_array_interface__(self):
        return dict(shape=self.shape, typestr=self.dtype.str, data=(self.ptr, False), version=3,
                    strides=None if self.is_c_contiguous else self.strides, stream=None)

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def swapaxes(self, a, b):
        shape, strides = list(self.shape), list(self.strides)
        shape[a], shape[b] = shape[b], shape[a]
        strides[a], strides[b] = strides[b], strides[a]
        return DeviceArray(self.ptr, shape, self.dtype, strides, owner=self)

    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if not self.is_c_contiguous or int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"DeviceArray.reshape: cannot view {self.shape} as {shape}")
        return DeviceArray(self.ptr, shape, self.dtype, owner=self)

    def __getitem__(self, key):
        """Integers, full slices and None (new axes) only: what fastrnn's input handling needs."""
        key = key if isinstance(key, tuple) else (key,)
        ptr, shape, strides, axis = self.ptr, [], [], 0
        for k in key:
            if k is None:
                shape.append(1)
                strides.append(0)
            elif isinstance(k, numbers.Integral):
                n = self.shape[axis]
                if not -n <= k < n:
                    raise IndexError(f"DeviceArray: index {k} out of range for axis {axis} of size {n}")
                ptr += (int(k) % n) * self.strides[axis]
                axis += 1
            elif isinstance(k, slice) and k == slice(None):
                shape.append(self.shape[axis])
                strides.append(self.strides[axis])
                axis += 1
            else:
                raise IndexError(f"DeviceArray: unsupported index {k!r} (integers, ':' and None only)")
        shape += self.shape[axis:]
        strides += self.strides[axis:]
        return DeviceArray(ptr, shape, self.dtype, strides, owner=self)

    def contiguous(self):
        """This array if C-contiguous, else a C-contiguous copy on the device."""
        if self.is_c_contiguous:
            return self
        out = empty(self.shape, self.dtype)
        shape = [n for n in self.shape if n != 1] or [1]
        strides = [s for n, s in zip(self.shape, self.strides) if n != 1] or [self.dtype.itemsize]
        _require("DeviceArray.contiguous").copy_strided(out.ptr, self.ptr, shape, strides, self.dtype.itemsize, 0)
        return out

    def __array__(self, dtype=None, copy=None):
        """NumPy functions see a host copy (``np.asarray(a)`` copies from the GPU)."""
        a = self.get()
        return a if dtype is None else a.astype(dtype, copy=False)

    def get(self):
        """A NumPy copy of the array."""
        src = self.contiguous()
        out = np.empty(self.shape, self.dtype)
        if out.size:
            _require("DeviceArray.get").copy_to_host(out, src.ptr, 0)
        return out


def empty(shape, dtype):
    """An uninitialised C-contiguous `DeviceArray` (RuntimeError without a usable backend).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> if fastrnn.cuda.is_available():
    ...     a = fastrnn.cuda.empty((2, 3), np.float32)
    ...     assert a.shape == (2, 3) and a.is_c_contiguous
    """
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    dtype = np.dtype(dtype)
    mod = _require("fastrnn.cuda.empty")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    alloc = _Allocation(mod, nbytes)
    return DeviceArray(alloc.ptr, shape, dtype, owner=alloc)


def to_device(a):
    """A `DeviceArray` copy of a NumPy array (or anything ``np.asarray`` accepts).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> if fastrnn.cuda.is_available():
    ...     x = np.arange(6.0).reshape(2, 3)
    ...     assert (fastrnn.cuda.to_device(x).get() == x).all()
    """
    a = np.ascontiguousarray(a)
    out = empty(a.shape, a.dtype)
    if a.size:
        _require("fastrnn.cuda.to_device").copy_to_device(out.ptr, a, 0)
    return out


def is_device_array(a):
    """True for objects exposing ``__cuda_array_interface__`` (CuPy, torch CUDA tensors, `DeviceArray`)."""
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # torch raises for tensors that require grad
        return False


def as_device_array(a, dtype, where, name):
    """`DeviceArray` view of a CUDA array of exactly `dtype` (TypeError otherwise)."""
    arr = a if isinstance(a, DeviceArray) else DeviceArray.from_interface(a)
    if arr.dtype != dtype:
        raise TypeError(f"{where}: {name} has dtype {arr.dtype}, expected {dtype} (the layer's dtype); "
                        f"convert it explicitly, e.g. {name}.astype(np.{dtype})")
    return arr


# ---------------------------------------------------------------- NumPy front end

class _Device:
    """Device copies of the host arrays of one call (DeviceArrays are used in place)."""

    def __init__(self):
        self.keep = []

    def __call__(self, a):
        if a is None:
            return 0
        if not isinstance(a, DeviceArray):
            a = to_device(a)
        self.keep.append(a)
        return a.ptr


def _zeros(shape, dtype):
    a = empty(shape, dtype)
    _backend.zero(a.ptr, a.nbytes, 0)
    return a


def _host_into(dst, src, add=False):
    """Copy (or add) a DeviceArray into a host NumPy array."""
    if dst is None:
        return
    if add:
        dst += src.get()
    elif dst.size:
        _backend.copy_to_host(dst, src.ptr, 0)


class _NumpyCore:
    """What `fastrnn.functional` calls for ``device="cuda"``: the plan's forward and backward
    with host arrays copied to the GPU (device arrays used in place), results copied back, and the
    training cache kept on the GPU as a `DeviceArray`. ``weights`` are the arrays in the plan's
    order; ``grads`` the same, None for the buffers."""

    @staticmethod
    def forward(plan, weights, x, out, h_n, c_n, h0, c0, lengths, cache, masks):
        mod = _require("fastrnn forward")
        T, N = x.shape[:2]
        dev = _Device()
        nbytes = mod.forward_workspace_bytes(plan, T, N, cache is not None)
        work = empty((nbytes,), np.uint8)
        d_out, d_hn = empty(out.shape, out.dtype), empty(h_n.shape, h_n.dtype)
        d_cn = None if c_n is None else empty(c_n.shape, c_n.dtype)
        mod.forward(plan, T, N, masks is not None, dev(x), [dev(w) for w in weights], dev(h0), dev(c0), dev(lengths),
                    dev(masks), d_out.ptr, d_hn.ptr, 0 if d_cn is None else d_cn.ptr,
                    0 if cache is None else cache.ptr, work.ptr, nbytes, 0)
        _host_into(out, d_out)
        _host_into(h_n, d_hn)
        if c_n is not None:
            _host_into(c_n, d_cn)

    @staticmethod
    def backward(plan, weights, x, cache, grad_out, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0, grads, lengths,
                 masks, retain=False, bptt_clip=0.0, grad_h_sq=None, grad_c_sq=None, carried_sq=None,
                 prev_state_sq=None):
        mod = _require("fastrnn backward")
        T, N = x.shape[:2]
        dev = _Device()
        d_gs = [None if g is None else _zeros(g.shape, g.dtype) for g in grads]
        d_diag = [None if a is None else _zeros(a.shape, np.float64) for a in (grad_h_sq, grad_c_sq, carried_sq,
                                                                              prev_state_sq)]
        d_gx, d_gh0 = empty(grad_x.shape, grad_x.dtype), empty(grad_h0.shape, grad_h0.dtype)
        d_gc0 = None if grad_c0 is None else empty(grad_c0.shape, grad_c0.dtype)
        nbytes = mod.backward_workspace_bytes(plan, T, N, retain, grad_h_sq is not None)
        work = empty((nbytes,), np.uint8)
        mod.backward(plan, T, N, masks is not None, dev(x), [dev(w) for w in weights], dev(lengths), dev(masks),
                     cache.ptr, dev(grad_out), dev(grad_h_n), dev(grad_c_n), d_gx.ptr, d_gh0.ptr,
                     0 if d_gc0 is None else d_gc0.ptr, [0 if g is None else g.ptr for g in d_gs], retain, bptt_clip,
                     *(0 if a is None else a.ptr for a in d_diag), work.ptr, nbytes, 0)
        _host_into(grad_x, d_gx)
        _host_into(grad_h0, d_gh0)
        _host_into(grad_c0, d_gc0)
        for host, device in zip(grads, d_gs):  # parameter gradients accumulate, like the CPU core's
            _host_into(host, device, add=True)
        for h, d in zip((grad_h_sq, grad_c_sq, carried_sq, prev_state_sq), d_diag):
            _host_into(h, d, add=True)


numpy_core = _NumpyCore()
