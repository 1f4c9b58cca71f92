"""The hooks a training loop calls (`fastrnn.fit`): the base class of every callback.

It lives in the core so that both the gradient tools (`fastrnn.diagnostics.Monitor`) and the
training toolkit (`fastrnn.callbacks`, `fastrnn.fit`) build on it without importing each other.
`fastrnn.callbacks.Callback` is this class.
"""


class Callback:
    """Base class: every hook does nothing. ``self.model``, ``self.optimizer`` and
    ``self.history`` are set by `fit`; ``self.stop(reason)`` ends training."""

    model = optimizer = history = None

    def _attach(self, model, optimizer, history):
        self.model, self.optimizer, self.history = model, optimizer, history

    def stop(self, reason):
        """Ask `fit` to stop; the first reason given is kept in ``history.stop_reason``."""
        if self.history.stop_reason is None:
            self.history.stop_reason = str(reason)

    def on_train_begin(self):
        pass

    def on_epoch_begin(self, epoch):
        pass

    def on_backward_end(self, step, logs):
        pass

    def on_batch_end(self, step, logs):
        pass

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self):
        pass
