"""`fit`: the training loop (forward, loss, backward, clipping, optimizer step) with history,
progress bar and callbacks."""
from __future__ import annotations

import functools
import math
import numbers
import sys
import time

import numpy as np

from .callbacks import Callback
from ..gradients.clip import clip_by_global_norm_, global_norm

__all__ = ["fit", "History"]


class History:
    """What `fit` recorded.

    Per step (lists of floats, one entry per optimizer step attempted): ``loss``, ``grad_norm``
    (global 2-norm before clipping), ``lr`` (the rate used by that step), ``epoch`` (the step's
    epoch). Per completed epoch: ``epoch_loss`` and ``epoch_grad_norm`` (means over its steps)
    and ``val_loss`` (mean batch loss on ``val_data``; empty without it). ``stop_reason`` is None
    or the message of the callback that stopped training.
    """

    def __init__(self):
        self.loss, self.grad_norm, self.lr, self.epoch = [], [], [], []
        self.epoch_loss, self.epoch_grad_norm, self.val_loss = [], [], []
        self.stop_reason = None

    @property
    def steps(self):
        """Number of recorded steps."""
        return len(self.loss)

    @property
    def epochs(self):
        """Number of completed epochs."""
        return len(self.epoch_loss)

    def to_dict(self):
        """Plain dict of lists (JSON-serialisable)."""
        keys = ("loss", "grad_norm", "lr", "epoch", "epoch_loss", "epoch_grad_norm", "val_loss")
        return {**{k: list(getattr(self, k)) for k in keys}, "stop_reason": self.stop_reason}

    def __repr__(self):
        last = f", last epoch loss {self.epoch_loss[-1]:.4g}" if self.epoch_loss else ""
        return f"History({self.steps} steps, {self.epochs} epochs{last})"


class _Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal (at most 10 times a
    second), one line per epoch otherwise (logs and pipes stay readable)."""

    def __init__(self, epochs, enabled, stream=None):
        self.epochs, self.enabled = epochs, bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.last_draw = 0.0
        self.expected = None  # batches per epoch, once known

    def _line(self, epoch, batch, total, loss, gnorm, extra=""):
        width = 20
        if total:
            done = min(width, int(width * batch / total))
            bar = f" [{'#' * done}{'.' * (width - done)}] {batch}/{total}"
        else:
            bar = f" {batch} batches"
        return (f"epoch {epoch + 1}/{self.epochs}{bar}  loss {loss:.4g}  |grad| {gnorm:.3g}{extra}")

    def batch(self, epoch, batch, total, loss, gnorm):
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self.last_draw < 0.1 and batch != total:
            return
        self.last_draw = now
        self.stream.write("\r" + self._line(epoch, batch, total or self.expected, loss, gnorm) + "\033[K")
        self.stream.flush()

    def epoch_end(self, epoch, batches, logs, seconds):
        self.expected = batches
        if not self.enabled:
            return
        extra = f"  val {logs['val_loss']:.4g}" if "val_loss" in logs else ""
        extra += f"  lr {logs['lr']:.3g}  {seconds:.1f}s"
        line = self._line(epoch, batches, batches, logs["loss"], logs["grad_norm"], extra)
        self.stream.write(("\r" + line + "\033[K\n") if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text):
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


def _batches(data, name):
    it = data() if callable(data) else data
    try:
        return iter(it)
    except TypeError:
        raise TypeError(f"fit: {name} must be an iterable of batches or a callable returning one; "
                        f"got {type(it).__name__}") from None


def _unpack(batch, name):
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    raise ValueError(f"fit: every batch of {name} must be (x, y) or (x, y, lengths); got "
                     f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}")


def _predict(model, x, lengths):
    pred = model(x) if lengths is None else model(x, lengths=lengths)
    if isinstance(pred, tuple):
        raise TypeError(f"fit: the model returned a tuple, expected one prediction array; a recurrent layer "
                        f"returns (output, state): wrap it, e.g. fastrnn.Sequential({type(model).__name__}(...), "
                        "fastrnn.Linear(H, K))")
    return pred


def fit(model, data, loss, optimizer, *, epochs, clip=None, callbacks=(), scheduler=None, verbose=True,
        val_data=None):
    """Train ``model`` on ``data`` for ``epochs`` epochs; returns a `History`.

    Each batch: ``model.zero_grad()``; ``pred = model(x[, lengths=lengths])``;
    ``value, grad = loss(pred, y)``; ``model.backward(grad)``; gradient norm (``clip``, or the
    global 2-norm); callbacks' ``on_backward_end``; ``optimizer.step()``; ``on_batch_end``.
    After each epoch: validation, ``scheduler.step()``, ``on_epoch_end``.

    Parameters
    ----------
    model : `fastrnn.Sequential` (or any module: ``forward``, ``backward``, ``params``,
        ``grads``, ``zero_grad``, ``train``/``eval``, ``state_dict``).
    data : iterable of batches ``(x, y)`` or ``(x, y, lengths)``, or a callable returning
        such an iterable (called once per epoch: use it for fresh random batches, or for a
        generator, which a plain iterable would exhaust after the first epoch).
    loss : ``loss(pred, y) -> (value, grad)``, e.g. `fastrnn.losses.mse`.
    optimizer : a `fastrnn.optim` optimizer built on ``model``.
    epochs : int >= 1.
    clip : None, a positive float ``max_norm`` (global-norm clipping, Pascanu et al. 2013:
        `fastrnn.clip.clip_by_global_norm_` with ``nonfinite="skip"``), or
        ``clip(grads) -> norm``: called with ``model.grads`` after backward; it may
        rescale the gradients in place and returns the norm measured before clipping (the
        `fastrnn.clip` convention, e.g. ``functools.partial(fastrnn.clip.clip_by_global_norm_,
        max_norm=1.0)``; add ``nonfinite="skip"`` there so that a NaN gradient reaches
        `TerminateOnNaN` instead of raising). Without it the global 2-norm is measured and
        nothing is changed.
    callbacks : sequence of `fastrnn.callbacks.Callback`.
    scheduler : None or a `fastrnn.optim` schedule (``step()`` once per epoch).
    verbose : draw a progress bar on stderr (redrawn in place on a terminal, one line per epoch
        otherwise) showing epoch, loss and gradient norm; False prints nothing.
    val_data : optional batches like ``data``; their mean loss (model in eval mode) is
        ``history.val_loss`` and the epoch log ``val_loss``.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> model = fastrnn.Sequential(fastrnn.LSTM(1, 16, rng=0), fastrnn.Linear(16, 1, rng=0))
    >>> batches = lambda: [fastrnn.tasks.sine(T=30, N=16, rng=i) for i in range(8)]
    >>> h = fastrnn.fit(model, batches, fastrnn.losses.mse, fastrnn.optim.Adam(model, lr=0.01),
    ...                 epochs=5, verbose=False)
    >>> h.steps, h.epochs, h.epoch_loss[-1] < h.epoch_loss[0] / 5
    (40, 5, True)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1, got {epochs!r}")
    if not callable(loss):
        raise TypeError(f"fit: loss must be callable (e.g. fastrnn.losses.mse), got {type(loss).__name__}")
    if isinstance(clip, numbers.Real) and not isinstance(clip, bool):
        if not 0 < clip < math.inf:
            raise ValueError(f"fit: clip = {clip!r}; a float clip is a max_norm and must be positive and finite")
        clip = functools.partial(clip_by_global_norm_, max_norm=float(clip), nonfinite="skip")
    if clip is not None and not callable(clip):
        raise TypeError(f"fit: clip must be None, a max_norm float or a callable clip(grads) -> norm, "
                        f"got {type(clip).__name__}")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"fit: scheduler must have a step() method, got {type(scheduler).__name__}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"fit: callbacks must be fastrnn.callbacks.Callback instances, got {type(cb).__name__}")
    for attr in ("forward", "backward", "grads", "zero_grad", "train"):
        if not hasattr(model, attr):
            raise TypeError(f"fit: model ({type(model).__name__}) has no {attr!r}; expected a fastrnn.Sequential "
                            "or a module with the same interface")

    history = History()
    progress = _Progress(int(epochs), verbose)
    for cb in callbacks:
        cb._attach(model, optimizer, history)

    def each(hook, *args):
        for cb in callbacks:
            getattr(cb, hook)(*args)
        return history.stop_reason is not None

    stopped = each("on_train_begin")
    step = 0
    for epoch in range(int(epochs)):
        if stopped:
            break
        start = time.perf_counter()
        stopped = each("on_epoch_begin", epoch)
        model.train()
        first_step, n = step, 0
        batches = _batches(data, "data") if not stopped else ()
        total = getattr(data, "__len__", None) and len(data)
        for n, batch in enumerate(batches, 1):
            x, y, lengths = _unpack(batch, "data")
            model.zero_grad()
            value, grad = loss(_predict(model, x, lengths), y)
            model.backward(grad)
            norm = float(clip(model.grads)) if clip is not None else global_norm(model.grads)
            lr = optimizer.lr
            history.loss.append(float(value))
            history.grad_norm.append(norm)
            history.lr.append(lr)
            history.epoch.append(epoch)
            logs = {"step": step, "epoch": epoch, "batch": n - 1, "loss": float(value), "grad_norm": norm, "lr": lr}
            stopped = each("on_backward_end", step, logs)
            if not stopped:
                optimizer.step()
                stopped = each("on_batch_end", step, logs)
            step += 1
            progress.batch(epoch, n, total, float(value), norm)
            if stopped:
                break
        if stopped:
            break
        if n == 0:
            raise ValueError(f"fit: data yielded no batches in epoch {epoch}; an iterator or generator is "
                             "exhausted after one epoch: pass a list or a callable returning a fresh iterable")
        logs = {"epoch": epoch, "loss": _mean(history.loss[first_step:]),
                "grad_norm": _mean(history.grad_norm[first_step:]), "lr": history.lr[-1]}
        if val_data is not None:
            logs["val_loss"] = _evaluate(model, val_data, loss)
            history.val_loss.append(logs["val_loss"])
        history.epoch_loss.append(logs["loss"])
        history.epoch_grad_norm.append(logs["grad_norm"])
        if scheduler is not None:
            scheduler.step()
        progress.epoch_end(epoch, n, logs, time.perf_counter() - start)
        stopped = each("on_epoch_end", epoch, logs)
    each("on_train_end")
    if history.stop_reason is not None:
        progress.message(history.stop_reason)
    return history


def _evaluate(model, val_data, loss):
    """Mean batch loss on ``val_data`` with the model in eval mode (no training cache)."""
    model.eval()
    try:
        values = [loss(_predict(model, x, lengths), y)[0]
                  for x, y, lengths in (_unpack(b, "val_data") for b in _batches(val_data, "val_data"))]
    finally:
        model.train()
    if not values:
        raise ValueError("fit: val_data yielded no batches")
    return _mean(values)


def _mean(values):
    with np.errstate(all="ignore"):  # Inf and NaN losses average to Inf/NaN without a warning
        return float(np.mean(values))
