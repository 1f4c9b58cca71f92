"""Gradient diagnostics from inside BPTT: vanishing and exploding gradients, as they happen.

A hook on a fused RNN's output (all any framework offers) sees only the *direct* gradient
dL⁺/dh_t of the top layer. fastrnn's C++ driver records, inside its BPTT loop, the *total*
gradient dL/dh_t that reaches every step of every layer and direction — the direct part plus
everything that flowed back through the recurrence (Pascanu, Mikolov & Bengio 2013, "On the
difficulty of training recurrent neural networks", §2) — together with the gate saturation of
the forward pass, the spectral radius of W_hh, and the first NaN/Inf.

Usage::

    with fastrnn.diagnostics.record(layer) as rec:      # a fastrnn layer or fastrnn.torch module
        out, _ = layer(x)
        layer.backward(grad)                              # (torch: loss.backward())
    report = rec.report()                                 # GradientReport
    print(report.summary()); report.plot("flow.png")

While a layer is recorded, every training forward reads gate statistics from the training cache
(one pass over it) and every backward asks the kernels for the per-step norms (a few flops per
element, no extra memory traffic); outside `record` nothing is computed.

Verdict: the kernels also record, per step, the part of the state gradient that arrived
through the recurrence from the step BPTT processed before (h, and c for LSTM). Its ratio to
that step's total gradient is the norm of the step Jacobian applied to the actual gradient — the
quantity whose product over steps vanishes or explodes (Pascanu et al. 2013, §2; Bengio et al.
1994). For each layer and direction, ``slope`` is the mean log10 of these per-step factors and
``change = slope * (T - 1)`` the decades a gradient gains or loses crossing the whole sequence:
"exploding" when any gradient is non-finite or the largest change exceeds +`EXPLODING_DECADES`
(more than 1000x), "vanishing" when the smallest is below -`VANISHING_DECADES` (less than 1/1000),
else "healthy". This does not depend on where the loss injects gradient (one step or all), unlike
the total per-step norms, which are recorded and plotted too.

Examples
--------
>>> import numpy as np, fastrnn
>>> rnn = fastrnn.RNN(4, 16, rng=0, dtype=np.float64)
>>> fastrnn.init.orthogonal_(rnn.params["weight_hh_l0"], gain=0.5, rng=1)[:0]
array([], shape=(0, 16), dtype=float64)
>>> x = np.random.default_rng(2).standard_normal((60, 8, 4))
>>> with fastrnn.diagnostics.record(rnn) as rec:
...     out, h = rnn(x)
...     g = np.zeros_like(out); g[-1] = 1.0               # loss on the last step only
...     _ = rnn.backward(g)
>>> r = rec.report()
>>> r.verdict, r.grad_h_norm.shape, round(float(r.spectral_radius[0, 0]), 3)
('vanishing', (1, 1, 60), 0.5)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core import cells as _cells
from ..core import functional as F
from ..core.callback import Callback

__all__ = ["record", "GradientReport", "Monitor", "gradcheck", "GradcheckResult", "spectral_radius",
           "largest_singular_value", "GATE_NAMES", "VANISHING_DECADES", "EXPLODING_DECADES"]

# Saturation statistics per cell, in the order the kernels record them (the cell table).
GATE_NAMES = {name: _cells.info(name).saturation for name in _cells.names()}
VANISHING_DECADES = 3.0
EXPLODING_DECADES = 3.0


def finite_reduce(fn, a):
    """fn (e.g. np.max) over the finite entries of a; NaN when there are none (no warning)."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(fn(a)) if a.size else float("nan")


# --------------------------------------------------------------------------- spectra

def spectral_radius(w, iters=200, rng=0):
    """ρ(W) = max |eigenvalue| of a square matrix, by power iteration (Gelfand's formula).

    ``‖W^k v‖^(1/k) → ρ(W)`` for a generic start vector v, also when the dominant eigenvalues
    form a complex pair (where plain power iteration oscillates); the growth is averaged over
    the second half of ``iters`` iterations so the start vector's transient drops out.

    Examples
    --------
    >>> import numpy as np
    >>> round(spectral_radius(np.array([[0.0, -2.0], [2.0, 0.0]])), 6)   # eigenvalues ±2i
    2.0
    """
    w = np.asarray(w, np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise ValueError(f"spectral_radius: w has shape {w.shape}, expected a non-empty square matrix")
    v = np.random.default_rng(rng).standard_normal(w.shape[0])
    v /= np.linalg.norm(v)
    logs = []
    for _ in range(int(iters)):
        v = w @ v
        n = float(np.linalg.norm(v))
        if n == 0.0 or not math.isfinite(n):
            return 0.0 if n == 0.0 else n
        logs.append(math.log(n))
        v /= n
    return float(math.exp(np.mean(logs[len(logs) // 2:])))


def largest_singular_value(w, iters=100, rng=0):
    """σ_max(W) = ‖W‖₂, by power iteration on WᵀW (converges monotonically; any shape).

    Examples
    --------
    >>> import numpy as np
    >>> round(largest_singular_value(np.diag([3.0, 1.0])), 6)
    3.0
    """
    w = np.asarray(w, np.float64)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"largest_singular_value: w has shape {w.shape}, expected a non-empty matrix")
    v = np.random.default_rng(rng).standard_normal(w.shape[1])
    v /= np.linalg.norm(v)
    s = 0.0
    for _ in range(int(iters)):
        u = w.T @ (w @ v)
        s = float(np.linalg.norm(u))
        if s == 0.0 or not math.isfinite(s):
            return math.sqrt(s) if math.isfinite(s) else s
        v = u / s
    return math.sqrt(s)


def _spectra(params, num_layers, num_directions, hidden_size):
    """Per layer and direction: ρ of each gate block of W_hh, and σ_max of the whole W_hh."""
    with np.errstate(over="ignore", invalid="ignore"):  # diverging weights give inf/nan, not warnings
        return _spectra_unchecked(params, num_layers, num_directions, hidden_size)


def _spectra_unchecked(params, num_layers, num_directions, hidden_size):
    L, D, H = num_layers, num_directions, hidden_size
    G = np.asarray(params["weight_hh_l0"]).shape[0] // H
    rho = np.empty((L, D, G))
    sigma = np.empty((L, D))
    for l in range(L):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            w = np.asarray(params["weight_hh" + sfx], np.float64)
            # LSTMP: the state is W_hr m, so a gate's unit-to-unit map is W_hh,g W_hr [H, H].
            w_hr = params.get("weight_hr" + sfx)
            for g in range(G):
                block = w[g * H:(g + 1) * H]
                rho[l, d, g] = spectral_radius(block if w_hr is None else block @ np.asarray(w_hr, np.float64))
            sigma[l, d] = largest_singular_value(w)
    return rho, sigma


# --------------------------------------------------------------------------- report

def _slopes(factors):
    """Mean log10 of the per-step propagation factors, per layer/direction (a dead step counts as 1e-30)."""
    L, D, _ = factors.shape
    out = np.full((L, D), np.nan)
    for l in range(L):
        for d in range(D):
            f = factors[l, d]
            f = f[np.isfinite(f)]
            if f.size:
                out[l, d] = float(np.mean(np.log10(np.maximum(f, 1e-30))))
    return out


@dataclass
class GradientReport:
    """What one training forward + backward looked like inside the recurrence.

    Arrays are indexed ``[layer, direction, ...]``; ``T`` is the time axis (time order, not
    processing order). Built by `record`; see the module docstring for the verdict rule.

    Attributes
    ----------
    grad_h_norm : ndarray [L, D, T]
        ‖dL/dh_t‖₂ over the batch and units: the total gradient (direct + recurrent), recorded
        inside the C++ BPTT loop; 0 at steps where every sequence is padded.
    grad_c_norm : ndarray [L, D, T] or None
        The same for the LSTM cell state.
    saturation : dict gate name -> ndarray [L, D, T]
        Fraction of units saturated at each step (sigmoid < 0.01 or > 0.99; tanh |v| > 0.99;
        tanh RNN |h| > 0.99; ReLU RNN: dead, h = 0); NaN for all-padded steps; None if the
        forward was not recorded.
    spectral_radius, spectral_radius_gates, singular_value : ndarray
        ρ(W_hh) ``[L, D]`` (largest over gate blocks), ρ per gate block ``[L, D, G]``, σ_max of
        the whole W_hh ``[L, D]`` (power iterations on the weights as they were at the
        backward, computed on first access; NaN when recorded with ``spectra=False``).
    propagation : ndarray [L, D, T]
        Per step, the fraction of the state gradient that survives one step of the recurrence:
        ‖what reached step t through it‖ / ‖the state gradient of the step BPTT processed before‖
        (dL/dh, and the arriving dL/dc for LSTM; over the sequences valid at both steps) — the
        step Jacobian's norm on the actual gradient; NaN where undefined.
    slope : ndarray [L, D]
        Mean log10 of the propagation factors: the gradient's change per step through the
        recurrence, in decades.
    first_nonfinite : dict or None
        The first NaN/Inf: ``layer``, ``direction``, ``step``, ``quantity`` ("input", "gate",
        "hidden state", "cell state" in the forward; "gradient" in the backward).
    verdict : str
        "vanishing", "exploding" or "healthy".
    """

    cell: str
    num_layers: int
    num_directions: int
    T: int
    N: int
    hidden_size: int
    grad_h_norm: np.ndarray
    grad_c_norm: Optional[np.ndarray]
    propagation: np.ndarray
    saturation: Optional[dict]
    forward_nonfinite: Optional[dict] = None  # the forward's first NaN/Inf (None: none, or not recorded)
    thresholds: dict = field(default_factory=lambda: {"vanishing_decades": VANISHING_DECADES,
                                                      "exploding_decades": EXPLODING_DECADES})
    # The recurrent weights at the time of the backward (copies), for the spectra, which are
    # computed on first access (power iterations cost O(G H^2) each: not worth paying per step
    # unless someone looks); None when recorded with spectra=False.
    weights_hh: Optional[dict] = field(default=None, repr=False, compare=False)
    _spectra_cache: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)
    _verdict_cache: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    # The derived numbers are computed on first access: recording a training step then costs
    # little more than the kernels' own records.
    @property
    def first_nonfinite(self):
        """The first NaN/Inf: from the forward (input, gate, state) or else the backward (gradient)."""
        return self.forward_nonfinite or _first_nonfinite_gradient(self.grad_h_norm, self.grad_c_norm)

    def _verdict(self):
        if self._verdict_cache is None:
            self._verdict_cache = verdict_of(self.grad_h_norm, self.propagation, self.first_nonfinite)
        return self._verdict_cache

    @property
    def verdict(self):
        """"vanishing", "exploding" or "healthy" (see the module docstring)."""
        return self._verdict()[0]

    @property
    def slope(self):
        """Mean log10 of the propagation factors per layer/direction ``[L, D]``."""
        return self._verdict()[1]

    def _spectra(self):
        if self._spectra_cache is None:
            L, D, H = self.num_layers, self.num_directions, self.hidden_size
            if self.weights_hh is None:
                G = _cells.gates(self.cell)
                self._spectra_cache = (np.full((L, D, G), np.nan), np.full((L, D), np.nan))
            else:
                self._spectra_cache = _spectra(self.weights_hh, L, D, H)
        return self._spectra_cache

    @property
    def spectral_radius_gates(self):
        """ρ of each gate block of W_hh, ``[L, D, G]`` (torch gate order)."""
        return self._spectra()[0]

    @property
    def spectral_radius(self):
        """Largest spectral radius over W_hh's gate blocks (the whole W_hh for RNN), ``[L, D]``."""
        return self._spectra()[0].max(axis=2)

    @property
    def singular_value(self):
        """σ_max of the whole W_hh [G·H, H], ``[L, D]``."""
        return self._spectra()[1]

    @property
    def change_decades(self):
        """slope · (T − 1): decades a gradient gains (+) or loses (−) crossing the whole sequence
        through the recurrence, per layer/direction (the verdict's measure)."""
        return self.slope * max(self.T - 1, 1)

    @property
    def gradient_ratio(self):
        """‖dL/dh‖ at the farthest step / at the nearest step (processing order), per layer/direction."""
        first = np.where(np.arange(self.num_directions)[None, :] == 0, self.grad_h_norm[:, :, 0],
                         self.grad_h_norm[:, :, -1])
        last = np.where(np.arange(self.num_directions)[None, :] == 0, self.grad_h_norm[:, :, -1],
                        self.grad_h_norm[:, :, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            return first / last

    def to_dict(self):
        """Plain Python types (lists, floats, None): JSON-ready."""
        def conv(v):
            if isinstance(v, np.ndarray):
                return np.where(np.isfinite(v), v, np.nan).tolist() if v.dtype.kind == "f" else v.tolist()
            if isinstance(v, dict):
                return {k: conv(a) for k, a in v.items()}
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            return v
        d = {k: conv(getattr(self, k)) for k in self.__dataclass_fields__
             if k not in ("weights_hh", "_spectra_cache", "_verdict_cache", "forward_nonfinite")}
        for k in ("first_nonfinite", "verdict", "slope", "spectral_radius", "spectral_radius_gates", "singular_value",
                  "change_decades"):
            d[k] = conv(getattr(self, k))
        d["gradient_ratio"] = conv(self.gradient_ratio)
        return d

    def to_json(self, **kw):
        """JSON text of `to_dict` (NaN written as null)."""
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, list):
                return [clean(a) for a in v]
            if isinstance(v, dict):
                return {k: clean(a) for k, a in v.items()}
            return v
        return json.dumps(clean(self.to_dict()), **kw)

    def summary(self):
        """A short text table: per layer/direction the gradient norms, decay, ρ(W_hh), saturation."""
        lines = [f"GradientReport: {self.cell}, L={self.num_layers} D={self.num_directions} T={self.T} "
                 f"N={self.N} H={self.hidden_size} -> verdict: {self.verdict}"]
        head = f"{'layer':>5} {'dir':>3} {'|dL/dh| near':>13} {'far':>10} {'decades':>8} {'rho(W_hh)':>9} " \
               f"{'sigma_max':>9}"
        if self.saturation:
            head += "  saturation " + " ".join(f"{g:>6}" for g in self.saturation)
        lines.append(head)
        for l in range(self.num_layers):
            for d in range(self.num_directions):
                norms = self.grad_h_norm[l, d]
                near, far = (norms[-1], norms[0]) if d == 0 else (norms[0], norms[-1])
                row = f"{l:>5} {d:>3} {near:>13.3e} {far:>10.3e} {self.change_decades[l, d]:>8.2f} " \
                      f"{self.spectral_radius[l, d]:>9.3f} {self.singular_value[l, d]:>9.3f}"
                if self.saturation:
                    row += "             " + " ".join(f"{finite_reduce(np.mean, v[l, d]):>6.1%}" for v in self.saturation.values())
                lines.append(row)
        if self.first_nonfinite:
            f = self.first_nonfinite
            lines.append(f"first non-finite: {f['quantity']} at layer {f['layer']}, direction {f['direction']}, "
                         f"step {f['step']}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def plot(self, path=None):
        """Draw log ‖dL/dh_t‖ against t per layer/direction and a gate-saturation heatmap.

        Needs matplotlib (optional dependency). Returns the figure; with ``path`` also saves it.
        """
        plt = _pyplot()
        gates = list(self.saturation) if self.saturation else []
        ncols = 2 if gates else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
        ax = axes[0, 0]
        t = np.arange(self.T)
        for l in range(self.num_layers):
            for d in range(self.num_directions):
                norms = np.where(self.grad_h_norm[l, d] > 0, self.grad_h_norm[l, d], np.nan)
                label = f"layer {l}" + (" reverse" if d else "")
                change = self.change_decades[l, d]
                note = f"{change:+.1f} decades" if np.isfinite(change) else "n/a"
                ax.semilogy(t, norms, label=f"{label} (through the recurrence: {note})")
        ax.set_xlabel("time step t")
        ax.set_ylabel("‖dL/dh_t‖ (total, inside BPTT)")
        ax.set_title(f"{self.cell}: gradient flow — {self.verdict}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if gates:
            ax = axes[0, 1]
            rows = [(f"L{l}{'r' if d else ''} {g}", self.saturation[g][l, d])
                    for l in range(self.num_layers) for d in range(self.num_directions) for g in gates]
            img = ax.imshow(np.array([r[1] for r in rows]), aspect="auto", vmin=0, vmax=1, cmap="magma",
                            interpolation="nearest")
            ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
            ax.set_xlabel("time step t")
            ax.set_title("fraction of saturated units")
            fig.colorbar(img, ax=ax)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def _pyplot():
    try:
        import matplotlib
        if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "png") and not _has_display():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastrnn plots need matplotlib: pip install matplotlib") from exc
    return plt


def _has_display():
    import os
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def verdict_of(grad_h_norm, propagation, first_nonfinite=None):
    """("vanishing" | "exploding" | "healthy", slopes [L, D]) from the per-step records."""
    slope = _slopes(propagation)
    change = slope * max(grad_h_norm.shape[-1] - 1, 1)
    if (first_nonfinite and first_nonfinite.get("quantity") == "gradient") or not np.isfinite(grad_h_norm).all():
        return "exploding", slope
    if finite_reduce(np.max, change) > EXPLODING_DECADES:
        return "exploding", slope
    if finite_reduce(np.min, change) < -VANISHING_DECADES:
        return "vanishing", slope
    return "healthy", slope


# --------------------------------------------------------------------------- recording

def _recurrent_layers(obj):
    """The fastrnn recurrent layers (NumPy or torch) inside obj: itself, or a container's members."""
    if hasattr(obj, "_cell") and hasattr(obj, "params") and hasattr(obj, "hidden_size"):
        return [obj]
    found = []
    members = getattr(obj, "modules", None)
    if callable(members):  # torch.nn.Module
        found = [m for m in obj.modules() if m is not obj and hasattr(m, "_cell") and hasattr(m, "_recorders")]
    elif isinstance(members, (list, tuple)):  # fastrnn.Sequential
        found = [m for m in members if hasattr(m, "_cell") and hasattr(m, "params")]
    return found


class record:
    """Context manager that records gradient diagnostics of a recurrent layer.

    ``layer`` is a fastrnn layer (`fastrnn.RNN/LSTM/GRU`), a `fastrnn.torch` module, or a
    container holding exactly one of them (a `fastrnn.Sequential`, a ``torch.nn.Module``).
    Every training forward + backward inside the block adds a `GradientReport` to
    ``rec.reports`` (``keep="last"`` keeps only the latest, for long training loops); `report`
    returns the last one. ``spectra=False`` skips the snapshot of W_hh for the spectra. Several
    recorders may watch one layer (the records are computed once); setting ``rec.active =
    False`` pauses one (no cost while paused).

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> lstm = fastrnn.LSTM(2, 8, rng=0)
    >>> with fastrnn.diagnostics.record(lstm) as rec:
    ...     out, _ = lstm(np.ones((5, 3, 2), np.float32))
    ...     _ = lstm.backward(np.ones_like(out))
    >>> sorted(rec.report().saturation), rec.report().grad_c_norm.shape
    (['cell', 'forget', 'input', 'output'], (1, 1, 5))
    """

    def __init__(self, layer, *, saturation=True, spectra=True, keep="all"):
        if keep not in ("all", "last"):
            raise ValueError(f"record: keep must be 'all' or 'last', got {keep!r}")
        self.keep = keep
        layers = _recurrent_layers(layer)
        if len(layers) != 1:
            what = "no fastrnn recurrent layer" if not layers else f"{len(layers)} recurrent layers"
            raise TypeError(f"record: expected a fastrnn layer, a fastrnn.torch module or a container with "
                            f"exactly one of them; found {what} in {type(layer).__name__} (record each layer "
                            "separately)")
        self.layer = layers[0]
        self.saturation = bool(saturation)
        self.spectra = bool(spectra)
        self.reports = []
        self.active = True
        self._pending = None

    def __enter__(self):
        if self in self.layer._recorders:
            raise RuntimeError("record: this recorder is already attached")
        self.layer._recorders = tuple(self.layer._recorders) + (self,)
        return self

    def __exit__(self, *exc):
        self.layer._recorders = tuple(r for r in self.layer._recorders if r is not self)
        return False

    def report(self, index=-1):
        """The `GradientReport` of a recorded backward (default: the last one)."""
        if not self.reports:
            raise RuntimeError("record: no backward was recorded; run a training forward and backward inside "
                               "the `with` block")
        return self.reports[index]

    # Hooks called by the layers.
    def _on_forward(self, layer, ctx, stats):
        saturation, first = stats
        if first is not None and first["layer"] == 0 and first["quantity"] == "gate":
            x = ctx.x[first["step"]]
            if not np.isfinite(x).all():
                first = dict(first, quantity="input")
        self._pending = (ctx, saturation if self.saturation else None, first)

    def _on_backward(self, layer, ctx):
        saturation, first = None, None
        if self._pending is not None and self._pending[0] is ctx:
            _, saturation, first = self._pending
        self._pending = None
        names = GATE_NAMES[ctx.cell]
        sat = None if saturation is None else {g: saturation[..., i] for i, g in enumerate(names)}
        weights = None
        if self.spectra:  # snapshot: the spectra are computed when first asked for
            weights = {k: np.array(v, copy=True) for k, v in layer.params.items() if k.startswith("weight_h")}
        if self.keep == "last":
            self.reports.clear()
        self.reports.append(GradientReport(
            cell=ctx.cell, num_layers=ctx.L, num_directions=ctx.D, T=ctx.T, N=ctx.N, hidden_size=ctx.H,
            grad_h_norm=ctx.grad_h_norm, grad_c_norm=ctx.grad_c_norm, propagation=ctx.propagation, saturation=sat,
            forward_nonfinite=first, weights_hh=weights))


def _first_nonfinite_gradient(grad_h_norm, grad_c_norm):
    """First non-finite per-step gradient norm in BPTT order: top layer first, each direction from
    its last processed step back."""
    L, D, T = grad_h_norm.shape
    for l in range(L - 1, -1, -1):
        best = None
        for d in range(D):
            bad = ~np.isfinite(grad_h_norm[l, d])
            if grad_c_norm is not None:
                bad |= ~np.isfinite(grad_c_norm[l, d])
            steps = np.flatnonzero(bad)
            if steps.size:
                t = int(steps.max()) if d == 0 else int(steps.min())
                k = (T - 1 - t) if d == 0 else t  # position in BPTT order
                if best is None or k < best[0]:
                    best = (k, d, t)
        if best is not None:
            return dict(layer=l, direction=best[1], step=best[2], quantity="gradient")
    return None


# --------------------------------------------------------------------------- training monitor



class Monitor(Callback):
    """Gradient health over training: what Pascanu et al.'s code logged, per optimizer step.

    Use it as a `fastrnn.fit` callback (it records the model's recurrent layer while training)
    or call `update` yourself with a `GradientReport`. ``records`` holds, per recorded step:
    ``step``, ``grad_norm`` (global, before clipping, from `fit`), ``clipped`` (grad_norm >
    ``max_norm``, when given), ``spectral_radius`` (largest over layers/directions/gates),
    ``min_change``/``max_change`` (decades, see `GradientReport.change_decades`) and ``verdict``;
    ``first_report`` and ``last_report`` are the first and latest whole `GradientReport`.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> model = fastrnn.Sequential(fastrnn.GRU(1, 8, rng=0), fastrnn.Linear(8, 1, rng=0))
    >>> x, y = fastrnn.tasks.sine(T=20, N=4, rng=0)
    >>> mon = fastrnn.diagnostics.Monitor(max_norm=1.0)
    >>> h = fastrnn.fit(model, [(x, y)], fastrnn.losses.mse, fastrnn.optim.Adam(model), epochs=3,
    ...                 callbacks=[mon], verbose=False)
    >>> len(mon.records["step"]), mon.records["verdict"][-1] in ("healthy", "vanishing", "exploding")
    (3, True)
    """

    def __init__(self, layer=None, *, max_norm=None, every=1, spectra=True):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Monitor: every must be an int >= 1, got {every!r}")
        if max_norm is not None and not (isinstance(max_norm, (int, float)) and max_norm > 0):
            raise ValueError(f"Monitor: max_norm must be None or a positive number, got {max_norm!r}")
        self.layer, self.max_norm, self.every, self.spectra = layer, max_norm, every, bool(spectra)
        self.records = {k: [] for k in ("step", "grad_norm", "clipped", "spectral_radius", "min_change",
                                        "max_change", "verdict")}
        self.first_report = self.last_report = None
        self._rec = None

    def on_train_begin(self):
        self._rec = record(self.layer if self.layer is not None else self.model, spectra=self.spectra, keep="last")
        self._rec.__enter__()

    def on_backward_end(self, step, logs):
        if self._rec is not None and self._rec.active and self._rec.reports:
            self.update(self._rec.reports[-1], grad_norm=logs.get("grad_norm"), step=step)

    def on_batch_end(self, step, logs):
        if self._rec is not None:  # record only the steps that are kept: no cost in between
            self._rec.active = (step + 1) % self.every == 0

    def on_train_end(self):
        if self._rec is not None:
            self._rec.__exit__(None, None, None)
            self._rec = None

    def update(self, report, grad_norm=None, step=None):
        """Add one step's numbers from a `GradientReport` (and the global gradient norm).

        The first and the latest reports are kept whole in ``first_report`` / ``last_report``.
        """
        if self.first_report is None:
            self.first_report = report
        self.last_report = report
        h = self.records
        h["step"].append(len(h["step"]) if step is None else int(step))
        h["grad_norm"].append(None if grad_norm is None else float(grad_norm))
        h["clipped"].append(None if (grad_norm is None or self.max_norm is None) else bool(grad_norm > self.max_norm))
        h["spectral_radius"].append(finite_reduce(np.max, report.spectral_radius))
        h["min_change"].append(finite_reduce(np.min, report.change_decades))
        h["max_change"].append(finite_reduce(np.max, report.change_decades))
        h["verdict"].append(report.verdict)

    @property
    def clipped_fraction(self):
        """Fraction of recorded steps whose gradient norm exceeded ``max_norm`` (None if unknown)."""
        flags = [c for c in self.records["clipped"] if c is not None]
        return (sum(flags) / len(flags)) if flags else None

    def plot(self, path=None):
        """Global gradient norm, ρ(W_hh) and the gradient change across the sequence over training."""
        plt = _pyplot()
        h = self.records
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
        steps = np.array(h["step"])
        gn = np.array([np.nan if v is None else v for v in h["grad_norm"]], float)
        axes[0].semilogy(steps, gn)
        if self.max_norm is not None:
            axes[0].axhline(self.max_norm, color="r", ls="--", label=f"max_norm {self.max_norm}")
            axes[0].legend(fontsize=8)
        axes[0].set_title("global gradient norm (before clipping)")
        axes[1].plot(steps, h["spectral_radius"])
        axes[1].axhline(1.0, color="gray", ls=":")
        axes[1].set_title("max spectral radius of W_hh")
        axes[2].plot(steps, h["min_change"], label="min")
        axes[2].plot(steps, h["max_change"], label="max")
        axes[2].axhline(-VANISHING_DECADES, color="b", ls="--", lw=0.8)
        axes[2].axhline(EXPLODING_DECADES, color="r", ls="--", lw=0.8)
        axes[2].set_title("log10 change of |dL/dh_t| across the sequence")
        axes[2].legend(fontsize=8)
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


# --------------------------------------------------------------------------- gradcheck

@dataclass
class GradcheckResult:
    """Outcome of `gradcheck`; truthy when every checked entry matched."""

    passed: bool
    max_abs_error: float
    max_rel_error: float
    worst: Optional[dict]
    checked: int

    def __bool__(self):
        return self.passed

    def __str__(self):
        if self.worst is None:
            return f"gradcheck: nothing checked"
        w = self.worst
        return (f"gradcheck {'passed' if self.passed else 'FAILED'} ({self.checked} entries): worst {w['name']}"
                f"{list(w['index'])}: analytic {w['analytic']:.10g} vs finite difference {w['numeric']:.10g} "
                f"(abs {self.max_abs_error:.3g}, rel {self.max_rel_error:.3g})")


def gradcheck(fn_or_layer, inputs, *, eps=1e-6, atol=1e-6, rtol=1e-4, max_per_tensor=24, rng=0):
    """Compare analytic gradients with central finite differences in float64.

    ``fn_or_layer`` is either
    - a float64 fastrnn model with ``forward``/``backward`` and ``params``/``grads`` (a recurrent
      layer, `fastrnn.Linear`, `fastrnn.Sequential`): the loss is ``sum(out * W)`` (plus the
      final states for recurrent layers) with fixed random W; ``inputs`` is ``x`` or ``(x, hx)``;
      the input, the initial states and every parameter are checked; or
    - a callable ``fn(*inputs) -> (loss, grads)`` returning a float and one gradient per input.

    At most ``max_per_tensor`` entries per tensor are checked (chosen at random with ``rng``).
    An entry passes when ``|analytic - numeric| <= atol + rtol * |numeric|``. Returns a
    `GradcheckResult` naming the worst mismatch.

    Examples
    --------
    >>> import numpy as np, fastrnn
    >>> gru = fastrnn.GRU(3, 4, dtype=np.float64, rng=0)
    >>> res = fastrnn.gradcheck(gru, np.random.default_rng(0).standard_normal((5, 2, 3)))
    >>> bool(res), res.checked > 50
    (True, True)
    """
    gen = np.random.default_rng(rng)
    if callable(fn_or_layer) and not hasattr(fn_or_layer, "backward"):
        fn = fn_or_layer
        arrays = [np.array(a, dtype=np.float64) for a in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
        _, grads = fn(*arrays)
        targets = [(f"input {i}", a, np.asarray(g, np.float64)) for i, (a, g) in enumerate(zip(arrays, grads))]
        loss = lambda: float(fn(*arrays)[0])  # noqa: E731
    else:
        targets, loss = _model_targets(fn_or_layer, inputs, gen)
    worst, max_abs, max_rel, checked, passed = None, 0.0, 0.0, 0, True
    for name, arr, analytic in targets:
        flat = arr.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= max_per_tensor else gen.choice(flat.size, max_per_tensor,
                                                                                  replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old
            num = (up - down) / (2 * eps)
            ana = float(analytic.reshape(-1)[i])
            err = abs(ana - num)
            rel = err / max(abs(num), 1e-12)
            checked += 1
            if err > atol + rtol * abs(num):
                passed = False
            if worst is None or err > max_abs:
                worst = dict(name=name, index=np.unravel_index(i, arr.shape), analytic=ana, numeric=num)
            max_abs, max_rel = max(max_abs, err), max(max_rel, rel if err > atol else 0.0)
    return GradcheckResult(passed, max_abs, max_rel, worst, checked)


def _model_targets(model, inputs, gen):
    """(name, live float64 array, analytic gradient) triples and the loss closure for a model."""
    if not all(np.asarray(p).dtype == np.float64 for p in model.params.values()):
        raise TypeError(f"gradcheck: {type(model).__name__} must be float64 (construct it with dtype=np.float64)")
    x, hx = (inputs if isinstance(inputs, tuple) else (inputs, None))
    x = np.array(x, dtype=np.float64)
    hx = None if hx is None else (tuple(np.array(h, np.float64) for h in hx) if isinstance(hx, (tuple, list))
                                  else np.array(hx, np.float64))
    recurrent = hasattr(model, "_cell")
    seed = int(gen.integers(2**31))

    def run():
        if hasattr(model, "rng") and isinstance(getattr(model, "rng"), np.random.Generator):
            model.rng = np.random.default_rng(seed)  # the same dropout masks on every call
        res = model.forward(x, hx) if recurrent else model.forward(x)
        return res if isinstance(res, tuple) else (res, None)

    model.train()
    out, state = run()
    states = [] if state is None else (list(state) if isinstance(state, tuple) else [state])
    w_out = gen.standard_normal(out.shape)
    w_states = [gen.standard_normal(s.shape) for s in states]

    def loss():
        o, st = run()
        sts = [] if st is None else (list(st) if isinstance(st, tuple) else [st])
        return float(np.sum(o * w_out) + sum(np.sum(a * w) for a, w in zip(sts, w_states)))

    model.zero_grad()
    back = model.backward(w_out, *w_states) if recurrent else model.backward(w_out)
    back = back if isinstance(back, tuple) else (back,)
    targets = [("x", x, np.asarray(back[0]))]
    if recurrent and hx is not None:
        hs = list(hx) if isinstance(hx, tuple) else [hx]
        for name, h, g in zip(("h0", "c0"), hs, back[1:]):
            targets.append((name, h, np.asarray(g)))
    grads = {k: g.copy() for k, g in model.grads.items()}
    targets += [(name, model.params[name], grads[name]) for name in model.params]
    return targets, loss
