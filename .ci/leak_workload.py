"""A small run over every cell, variant and option, for LeakSanitizer (.ci/sanitize) and valgrind
(.ci/leaks): training (dropout, lengths, regularizers, retained and consumed caches, diagnostics),
inference, two threads, error paths raised inside the extension. Exits 0; the tools judge the
memory."""
import numpy as np

import fastrnn
from fastrnn import _C
from fastrnn import functional as F
from fastrnn.core import cells as _cells

fastrnn.set_num_threads(2)
rng = np.random.default_rng(0)
CELLS = [(fastrnn.LSTM, {}), (fastrnn.GRU, {}), (fastrnn.GRU, {"reset_after": False}),
         (fastrnn.RNN, {"nonlinearity": "tanh"}), (fastrnn.RNN, {"nonlinearity": "relu"})]
for isa in fastrnn.available_isas():
    fastrnn.set_isa(isa)
    for cls, kw in CELLS:
        for dtype in (np.float32, np.float64):
            layer = cls(5, 19, num_layers=2, bidirectional=True, dropout=0.3, dtype=dtype, rng=0, **kw)
            x = rng.standard_normal((7, 3, 5)).astype(dtype)
            for _ in range(2):
                out, _ = layer(x, lengths=[7, 2, 5])
                layer.backward(np.ones_like(out))
            out, _ = layer(x)  # a cache dropped unused
            layer.eval()
            layer(x)
            layer(x[:, 0])  # unbatched
            _, _, ctx = F.lstm_forward(x, fastrnn.LSTM(5, 4, dtype=dtype, rng=0).params, training=True)
            F.backward(ctx, None, retain=True)
            F.backward(ctx, None)
            big = cls(5, 200, dtype=dtype, rng=0, **kw).eval()  # several threads per step
            big(rng.standard_normal((20, 16, 5)).astype(dtype))

    # Cell variants, in-kernel regularizers, BPTT clipping and gradient diagnostics.
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((6, 3, 5)).astype(dtype)
        variants = [fastrnn.LSTM(5, 9, num_layers=2, bidirectional=True, proj_size=4, peephole=True, dtype=dtype,
                                 rng=0, recurrent_dropout=0.3, zoneout_h=0.2, zoneout_c=0.1, weight_drop=0.2,
                                 bptt_clip=0.5),
                    fastrnn.LayerNormLSTM(5, 9, num_layers=2, dtype=dtype, rng=0, zoneout_c=0.2),
                    fastrnn.LayerNormGRU(5, 9, bidirectional=True, dtype=dtype, rng=0, recurrent_dropout=0.2),
                    fastrnn.GRU(5, 9, reset_after=False, dtype=dtype, rng=0, weight_drop=0.3, zoneout_h=0.2)]
        for layer in variants:
            with fastrnn.diagnostics.record(layer) as rec:
                out, _ = layer(x, lengths=[6, 1, 4])
                layer.backward(np.ones_like(out))
            rec.report().summary()
            layer.eval()
            layer(x)

# Errors raised by the bindings after they converted some arguments (the plan API of _C).
layer = fastrnn.LSTM(3, 4, rng=0)
plan = _C.Plan(_cells.code("lstm"), True, True, 3, 4, 1, 1, "float32")
plan.set_weights([layer.params[name] for name, _, buffer in plan.parameters if not buffer])
x = np.ones((5, 2, 3), np.float32)
out = np.empty((5, 2, 4), np.float32)
h_n = np.empty((1, 2, 4), np.float32)
c_n = h_n.copy()
errors = 0
for bad_lengths in (np.array([0, 1]), np.array([1, 9])):
    try:
        plan.forward(x, out, h_n, c_n, lengths=bad_lengths)
    except ValueError:
        errors += 1
try:
    plan.forward(x.astype(np.float64), out, h_n, c_n)
except TypeError:
    errors += 1
try:
    plan.set_weights([np.ones((3, 3), np.float32)])
except (ValueError, TypeError):
    errors += 1
assert errors == 4, f"{errors} of 4 bad calls raised"
print("leak workload done")
