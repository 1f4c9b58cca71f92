"""Callbacks for `fastrnn.fit`: hooks into the training loop and a way to stop it.

`fit` attaches ``model``, ``optimizer`` and ``history`` to each callback before
``on_train_begin``, then calls, in this order::

    on_train_begin()
    per epoch:  on_epoch_begin(epoch)
                per batch:  on_backward_end(step, logs)   after backward and clipping, before the
                                                          update: stopping here skips the update
                            on_batch_end(step, logs)      after the optimizer step
                on_epoch_end(epoch, logs)                 after validation and the scheduler step
    on_train_end()

Batch logs: ``step`` (global, from 0), ``epoch``, ``batch``, ``loss``, ``grad_norm`` (global
2-norm before clipping), ``lr``. Epoch logs: ``epoch``, ``loss`` and ``grad_norm`` (means over
the epoch's steps), ``lr``, and ``val_loss`` when `fit` has ``val_data``. A callback ends
training with ``self.stop(reason)``; `fit` finishes the current hook round and returns, with
the reason in ``history.stop_reason``.

Examples
--------
>>> import fastrnn
>>> class StopAfter(fastrnn.callbacks.Callback):
...     def on_batch_end(self, step, logs):
...         if step == 2:
...             self.stop("three steps are enough")
>>> issubclass(StopAfter, fastrnn.callbacks.Callback)
True
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np

from ..core.callback import Callback
from ..gradients.diagnostics import _recurrent_layers, record

__all__ = ["Callback", "TerminateOnNaN", "EarlyStopping", "ModelCheckpoint"]


def _nonfinite(arrays):
    """Names of the arrays holding a NaN or Inf, in dict order."""
    return [name for name, a in arrays.items() if not np.isfinite(a).all()]


class TerminateOnNaN(Callback):
    """Stop at the first step whose loss or gradient is not finite, before the update.

    The parameters therefore keep their last finite values. After stopping, ``step`` (global
    step index), ``epoch``, ``batch``, ``parameter`` (the first parameter, in the model's
    order, whose gradient has a NaN/Inf; None when the gradients are finite),
    ``parameters`` (all of them) and ``message`` describe what happened; the message is also
    ``history.stop_reason``. With ``locate=True`` (default) the model's fastrnn recurrent layers
    are recorded by `fastrnn.diagnostics` (without the spectra), and
    ``location`` (and the message) says where inside the recurrence the first NaN/Inf appeared:
    layer, direction, time step and quantity (input, gate, hidden/cell state, or gradient).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> model = fastrnn.Linear(1, 1, dtype=np.float64, rng=0)
    >>> data = [(np.array([[1.0]]), np.array([[np.inf]]))]
    >>> cb = fastrnn.callbacks.TerminateOnNaN()
    >>> h = fastrnn.fit(model, data, fastrnn.losses.mse, fastrnn.optim.SGD(model), epochs=3,
    ...                 callbacks=[cb], verbose=False)
    >>> cb.step, cb.parameter
    (0, 'weight')
    """

    step = epoch = batch = parameter = message = location = None
    parameters = ()

    def __init__(self, locate=True):
        self.locate = bool(locate)
        self._own = []

    def on_train_begin(self):
        if not self.locate:
            return
        layers = getattr(self.model, "modules", None)
        candidates = layers if isinstance(layers, (list, tuple)) else [self.model]
        for i, m in enumerate(candidates):
            for layer in _recurrent_layers(m):
                rec = record(layer, spectra=False, keep="last")
                rec.__enter__()
                self._own.append((i, rec))

    def on_train_end(self):
        for _, rec in self._own:
            rec.__exit__(None, None, None)
        self._own = []

    def _locate(self):
        for i, rec in self._own:
            if rec.reports and rec.reports[-1].first_nonfinite:
                return dict(rec.reports[-1].first_nonfinite, module=i)
        return None

    def on_backward_end(self, step, logs):
        if math.isfinite(logs["loss"]) and math.isfinite(logs["grad_norm"]):
            return
        self.step, self.epoch, self.batch = step, logs["epoch"], logs["batch"]
        self.parameters = _nonfinite(self.model.grads)
        self.parameter = self.parameters[0] if self.parameters else None
        where = f"step {step} (epoch {self.epoch}, batch {self.batch})"
        msg = f"TerminateOnNaN: non-finite values at {where}: loss = {logs['loss']}, gradient norm = {logs['grad_norm']}"
        if self.parameters:
            msg += f"; first non-finite gradient: {self.parameter!r} (all: {', '.join(self.parameters)})"
        else:
            msg += "; gradients are finite"
        bad_params = _nonfinite(self.model.params)
        if bad_params:
            msg += f"; parameters already non-finite: {', '.join(bad_params)}"
        self.location = self._locate() if self.locate else None
        if self.location:
            f = self.location
            msg += (f"; first non-finite value inside the recurrence: {f['quantity']} at module {f['module']}, "
                    f"layer {f['layer']}, direction {f['direction']}, time step {f['step']}")
        self.message = msg
        self.stop(msg)


class _Monitor(Callback):
    """Tracks the best value of an epoch-log entry (lower is better)."""

    def __init__(self, monitor, min_delta=0.0):
        self.monitor = str(monitor)
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or not min_delta >= 0:
            raise ValueError(f"{type(self).__name__}: min_delta must be a real >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.best_epoch = None

    def _improved(self, epoch, logs):
        if self.monitor not in logs:
            hint = "; pass val_data to fit" if self.monitor == "val_loss" else ""
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not in the epoch logs "
                             f"(available: {sorted(logs)}){hint}")
        value = float(logs[self.monitor])
        if value < self.best - self.min_delta:  # NaN never improves
            self.best, self.best_epoch = value, epoch
            return True
        return False


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` (an epoch-log entry, lower is better) has not improved by more than
    ``min_delta`` for ``patience`` epochs in a row (Keras' rule; ``patience=0`` stops at the first
    epoch without improvement); with ``restore_best=True`` the model gets back the
    parameters of its best epoch when training ends.

    After training: ``best``, ``best_epoch``, ``stopped_epoch`` (None if it did not stop).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> model = fastrnn.Linear(1, 1, dtype=np.float64, rng=0)
    >>> data = [(np.array([[1.0]]), np.array([[2.0]]))]
    >>> stop = fastrnn.callbacks.EarlyStopping("loss", patience=2)
    >>> h = fastrnn.fit(model, data, fastrnn.losses.mse, fastrnn.optim.SGD(model, lr=0.0), epochs=50,
    ...                 callbacks=[stop], verbose=False)   # lr = 0: the loss never improves
    >>> stop.best_epoch, stop.stopped_epoch, h.epochs
    (0, 2, 3)
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=False):
        super().__init__(monitor, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        self.patience = patience
        self.restore_best = bool(restore_best)
        self.wait = 0
        self.stopped_epoch = None
        self._best_state = None

    def on_epoch_end(self, epoch, logs):
        if self._improved(epoch, logs):
            self.wait = 0
            if self.restore_best:
                self._best_state = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.stop(f"EarlyStopping: {self.monitor} did not improve on {self.best:.6g} (epoch {self.best_epoch}) "
                      f"for {self.wait} epochs")

    def on_train_end(self):
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)


class ModelCheckpoint(_Monitor):
    """Save the model's state dict as ``.npz`` after every epoch, or only when ``monitor`` improves.

    ``path`` may contain ``{epoch}`` and epoch-log fields, e.g. ``"ckpt-{epoch:03d}.npz"``; a
    fixed path is overwritten. Files are written with ``np.savez`` (load them with
    ``Sequential.load`` or ``model.load_state_dict(np.load(path))``). ``saved`` lists the paths.

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastrnn
    >>> model = fastrnn.Sequential(fastrnn.Linear(1, 1, dtype=np.float64, rng=0))
    >>> data = [(np.array([[1.0]]), np.array([[2.0]]))]
    >>> d = tempfile.mkdtemp()
    >>> ckpt = fastrnn.callbacks.ModelCheckpoint(os.path.join(d, "e{epoch}.npz"))
    >>> h = fastrnn.fit(model, data, fastrnn.losses.mse, fastrnn.optim.SGD(model), epochs=2,
    ...                 callbacks=[ckpt], verbose=False)
    >>> [os.path.basename(p) for p in ckpt.saved]
    ['e0.npz', 'e1.npz']
    """

    def __init__(self, path, monitor="loss", save_best_only=False):
        super().__init__(monitor)
        self.path = os.fspath(path)
        self.save_best_only = bool(save_best_only)
        self.saved = []

    def on_epoch_end(self, epoch, logs):
        improved = self._improved(epoch, logs)
        if self.save_best_only and not improved:
            return
        path = self.path.format(**{**logs, "epoch": epoch})
        np.savez(path, **self.model.state_dict())
        self.saved.append(path if path.endswith(".npz") else path + ".npz")
