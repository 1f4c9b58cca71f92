"""Streaming inference: one step (or a few) per call, the state carried between calls.

``layer.stream(batch=N)`` returns a `Stream` for N independent slots (streams) that start and
stop on their own: online speech recognition, keyword spotting, noise suppression, control. The
core's stream (csrc/core/stream.h) does once what a call of the layer would redo at every step:
the call's descriptor, the state buffers and the weights' arrangement. With a few slots its
recurrent products read the layer's weights where they are (nothing is packed), so an update of
the parameters (an optimizer step, ``load_state_dict``, a write into ``params``) is used by the
next step; with many slots (more than 8) it reads the plan's packed copy, which the core checks
against the weights at every step. A replaced array is picked up at the next step too. A layer
with ``compute_dtype`` "int8" or "bfloat16" streams on weights converted when the stream starts,
again after ``load_state_dict`` or a replaced array, but not after other in-place writes into
``params`` (comparing the weights at every step cost more than the step: docs/precision.md).

A stream is used by one thread at a time (a second thread stepping it at the same moment gets a
RuntimeError); streams of one layer step concurrently, each on its own thread.

Examples
--------
>>> import numpy as np, fastrnn
>>> layer = fastrnn.GRU(4, 8, rng=0).eval()
>>> s = layer.stream(batch=2)
>>> x = np.ones((5, 2, 4), np.float32)
>>> steps = np.stack([s.step(x[t]) for t in range(5)])   # one step per call
>>> out, h_n = layer(x)                                     # the same as one call
>>> bool(np.allclose(steps, out, atol=1e-6)), bool(np.allclose(s.state, h_n, atol=1e-6))
(True, True)
>>> s.reset([1])                                            # slot 1 starts a new stream
>>> s.step(x[0], active=np.array([True, False])).shape      # slot 1 waits: its state is kept
(2, 8)
"""
from __future__ import annotations

import threading

import numpy as np

from .. import _C
from . import functional as _functional

__all__ = ["Stream"]


def check_streamable(layer, where):
    """What every stream needs of its layer (or module): eval mode, one direction."""
    if layer.bidirectional:
        raise ValueError(f"{where}: a bidirectional layer cannot stream: its reverse direction reads each "
                         "sequence from its end, which a stream has not seen yet")
    if layer.training:
        raise RuntimeError(f"{where}: the layer is in training mode; a stream runs inference (call "
                           "layer.eval() first)")


class Stream:
    """Inference on a layer one step (or a chunk of steps) per call, for ``batch`` slots.

    Made by ``layer.stream(batch)`` (NumPy layers) or ``module.stream(batch)`` (`fastrnn.torch`,
    CPU tensors). The layer must be in eval mode and unidirectional. Every cell and variant.

    Attributes
    ----------
    batch : int
        The number of slots N.
    state : ndarray or tuple of ndarray
        A copy of the state, as the layer's ``hx``: ``h`` ``[L, N, K]``, LSTM ``(h, c)`` with
        ``c`` ``[L, N, H]`` (K = ``proj_size`` or H). Assigning it sets every slot's state.
    """

    def __init__(self, layer, batch, *, where, lstm, weights, zoneout_h=0.0, zoneout_c=0.0):
        # layer: the owner; weights(where) -> the current functional._Weights (the same object
        # while the layer's arrays are unchanged). A frontend (fastrnn.torch) overrides the
        # conversions _inputs, _output, _state_in and _state_out.
        if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)):
            raise TypeError(f"{where}: batch must be an int, got {type(batch).__name__}")
        if batch < 1:
            raise ValueError(f"{where}: batch must be >= 1, got {batch}")
        check_streamable(layer, where)
        self._layer, self._where, self._lstm = layer, where, lstm
        self._weights_of = weights
        self._rates = (float(zoneout_h), float(zoneout_c))
        self._lock = threading.Lock()
        self._converts = type(self)._inputs is not Stream._inputs  # a frontend's conversions (fastrnn.torch)
        self._w = weights(where)
        # the layer's compute_dtype ("int8", "bfloat16"), "" for its own dtype, checked as a call would
        self._precision = _functional._check_compute_dtype(getattr(layer, "compute_dtype", None), self._w.dtype,
                                                           False, "cpu", where)
        self._core = _C.Stream(self._w.plan, int(batch), *self._rates, precision=self._precision)
        self.batch = int(batch)
        self.dtype = self._w.dtype
        self._C, self._K = self._w.C, self._core.h.shape[2]
        self._batch_first = bool(getattr(layer, "batch_first", False))

    def __repr__(self):
        return (f"Stream({type(self._layer).__name__}, batch={self.batch}, dtype={np.dtype(self.dtype).name}, "
                f"weights={self._precision or ('in place' if self._core.in_place else 'packed')})")

    def _enter(self, what):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{self._where}.{what}: the stream is being used by another thread; a stream "
                               "carries one state, so step it from one thread at a time (give each thread its own "
                               "stream: streams of one layer step concurrently)")

    def _rebind(self, w):
        """The core stream on new weights (a new plan: an array was replaced), keeping the state."""
        core = _C.Stream(w.plan, self.batch, *self._rates, precision=self._precision)
        core.h[...] = self._core.h
        if self._lstm:
            core.c[...] = self._core.c
        self._w, self._core = w, core

    def step(self, x, active=None, out=None):
        """Run one step, ``x`` ``[N, C]``, or a chunk of k steps, ``[k, N, C]`` (``[N, k, C]`` for a
        ``batch_first`` layer); returns the output ``[N, K]`` or ``[k, N, K]`` and carries the state.

        ``active`` (bool ``[N]``): only these slots step; the others keep their state and get zero
        output rows. ``out``: an array of the output's shape and dtype to write into (then nothing is
        allocated per step). Raises TypeError for another dtype than the layer's, ValueError for the
        wrong N or C.
        """
        if not self._lock.acquire(False):  # positional: 0.15 us less than blocking=False
            self._enter("step")
        try:
            if self._layer.training:
                raise RuntimeError(f"{self._where}.step: the layer is in training mode; call layer.eval() to stream")
            w = self._weights_of(self._where)  # the same object while the layer's arrays are unchanged
            if w is not self._w:
                self._rebind(w)
            if self._converts:
                x, active, out = self._inputs(x, active, out)
            if type(x) is not np.ndarray or not x.flags.c_contiguous or (self._batch_first and x.ndim == 3):
                x = self._as_input(x)
            if active is not None and (type(active) is not np.ndarray or active.dtype != np.bool_
                                       or not active.flags.c_contiguous):
                active = self._as_mask(active)
            chunk = x.ndim == 3
            if out is None or (chunk and self._batch_first):
                y = np.empty((x.shape[0], self.batch, self._K) if chunk else (self.batch, self._K), self.dtype)
            else:
                y = out
            try:
                self._core.step(x, y, active)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{self._where}.step: {e}") from None
            if chunk and self._batch_first:
                y = y.transpose(1, 0, 2)
                if out is not None:
                    out[...] = y
                    y = out
            return self._output(y) if self._converts else y
        finally:
            self._lock.release()

    def _as_input(self, x):
        if not isinstance(x, np.ndarray):  # a list or a scalar sequence: no dtype of its own to check
            x = np.asarray(x, dtype=self.dtype)
        if self._batch_first and x.ndim == 3:
            x = x.transpose(1, 0, 2)
        return np.ascontiguousarray(x)

    def _as_mask(self, active):
        a = np.asarray(active)
        if a.dtype != np.bool_:
            raise TypeError(f"{self._where}.step: active must be a bool array of shape ({self.batch},), got dtype "
                            f"{a.dtype}")
        return np.ascontiguousarray(a)

    __call__ = step

    def reset(self, slots=None, h=None, c=None):
        """Zero the state of ``slots`` (an index or a sequence of them; None: every slot), or set it:
        ``h`` ``[L, len(slots), K]`` and, for LSTM, ``c`` ``[L, len(slots), H]``."""
        self._enter("reset")
        try:
            where = f"{self._where}.reset"
            core = self._core
            idx = np.arange(self.batch) if slots is None else np.atleast_1d(np.asarray(slots))
            if idx.dtype.kind not in "iu" or idx.ndim != 1:
                raise TypeError(f"{where}: slots must be an int or a sequence of ints, got {slots!r}")
            if idx.size and (idx.min() < 0 or idx.max() >= self.batch):
                raise ValueError(f"{where}: slots {idx.tolist()} outside [0, {self.batch})")
            if c is not None and not self._lstm:
                raise ValueError(f"{where}: c is for LSTM streams only")
            new = []
            for name, value, target in (("h", h, core.h), ("c", c, core.c)):
                if value is None:
                    continue
                a = self._state_array(value, name, where)
                want = (target.shape[0], idx.size, target.shape[2])
                if a.shape != want:
                    raise ValueError(f"{where}: {name} has shape {a.shape}, expected {want} "
                                     "(layers, slots, units)")
                new.append((target, a))
            if h is None and c is None:
                core.reset(idx.astype(np.int64))
            else:
                if self._lstm and (h is None) != (c is None):
                    core.reset(idx.astype(np.int64))  # the state not given starts from zero
                for target, a in new:
                    target[:, idx] = a
        finally:
            self._lock.release()

    def _state_array(self, value, name, where):
        a = np.asarray(self._state_in(value))
        if a.dtype != self.dtype:
            raise TypeError(f"{where}: {name} has dtype {a.dtype}, expected {np.dtype(self.dtype).name} (the layer's)")
        return a

    # The frontend's conversions (NumPy here: none).
    def _inputs(self, x, active, out):
        return x, active, out

    def _output(self, y):
        return y

    def _state_in(self, value):
        return value

    def _state_out(self, a):
        return a

    @property
    def state(self):
        core = self._core
        h = self._state_out(core.h.copy())
        return (h, self._state_out(core.c.copy())) if self._lstm else h

    @state.setter
    def state(self, value):
        where = f"{self._where}.state"
        if self._lstm:
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise TypeError(f"{where}: an LSTM stream's state is a tuple (h, c)")
            self.reset(None, h=value[0], c=value[1])
        else:
            self.reset(None, h=value)
