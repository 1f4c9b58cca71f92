"""Comparison benchmark: fastrnn against torch.nn, ONNX Runtime and a NumPy forward
(``python -m fastrnn bench``, ``bench/compare.py``).

Method (docs/design.md, "Performance method"). For every cell, shape and thread count, every implementation loads the
same weights (the state_dict of a fastrnn layer) and is first checked against a float64 oracle
(the NumPy forward below in float64 for outputs; ``torch`` in float64 for gradients when torch is
installed); one that disagrees by more than ``RTOL`` relative to the oracle's largest magnitude
is reported as wrong and not timed. The rest are timed round-robin in this process with a
rotating order: a warm-up and calibration picks for each implementation the number of inner
repetitions that lasts ``min_time``; each of ``repeats`` rounds takes one sample (mean time per
call over those repetitions) of every implementation. A sample during which other processes used
more than ``max_foreign_load`` cores (``/proc/stat`` busy time minus this process's CPU time) is
re-taken up to twice. Reported: the median time, effective GFLOP/s from `flops`, the percentage
of the same-run NumPy GEMM rate at the same thread count, and for every peer the median of the
per-round ratios ``peer time / fastrnn time`` (> 1: fastrnn is faster).

Only the public API of fastrnn is used (``fastrnn.RNN/LSTM/GRU``, ``forward``, ``backward``,
``eval``, ``set_num_threads``, ``get_isa``), so the instrument survives kernel rewrites; at more
than one thread it also reads the thread pool's barrier cost and back-offs (``_C._barrier_ns``,
``_C._wait_stats``) where the build has them.
torch, onnx/onnxruntime and threadpoolctl are optional: a missing one skips its peer with a note.

Examples
--------
>>> result = run(cells=["rnn"], shapes=["4,2,8,8"], modes=["inference"], peers=["numpy"], repeats=2,
...              min_time=0.001, gemm_size=64)
>>> row = result["rows"][0]
>>> row["cell"], row["shape"]["T"], row["impls"]["numpy"]["status"]
('rnn', 4, 'timed')
>>> row["impls"]["numpy"]["speedup"] > 0
True
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

import fastrnn

from ..core import reference as _reference
from ..core import validation as V
from . import speechbrain as _speechbrain

CELLS = ("lstm", "gru", "rnn")  # the default rows
LIGRU_CELLS = ("ligru", "sligru")  # SpeechBrain's defaults: 1 layer, batch norm, ReLU
ALL_CELLS = CELLS + LIGRU_CELLS
MODES = ("inference", "training")
PEERS = ("torch", "onnxruntime", "openvino", "numpy", "speechbrain")
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "ligru": 2, "sligru": 2}
RTOL = 1e-3  # largest accepted |impl - oracle| / max|oracle|
_RETAKES = 2  # extra attempts for a sample disturbed by other processes


@dataclass(frozen=True)
class Shape:
    """A benchmark problem size: T steps, N batch, C input features, H hidden units."""

    name: str
    T: int
    N: int
    C: int
    H: int

    @property
    def label(self):
        """"A (100,1,128)" for a named shape (C = H), "T,N,C,H" for a custom one."""
        if self.name != f"{self.T},{self.N},{self.C},{self.H}":
            dims = (self.T, self.N, self.C) if self.C == self.H else (self.T, self.N, self.C, self.H)
            return f"{self.name} ({','.join(map(str, dims))})"
        return self.name


# Reference shapes of docs/design.md, "Performance method" (T, N, C = H); "q" is the tiny shape of --quick.
SHAPES = {name: Shape(name, T, N, H, H) for name, (T, N, H) in {
    "A": (100, 1, 128), "B": (100, 16, 256), "C": (100, 64, 512),
    "D": (50, 128, 1024), "E": (200, 32, 256), "F": (1000, 8, 64)}.items()}
QUICK_SHAPE = Shape("q", 12, 2, 16, 16)


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked (the message says why)."""


class Unavailable(Exception):
    """An implementation that cannot run here (missing package, unsupported dtype, ...)."""


def parse_shape(text):
    """A reference shape name (``"A"`` ... ``"F"``) or a custom ``"T,N,C,H"`` string -> `Shape`.

    Examples
    --------
    >>> parse_shape("b")
    Shape(name='B', T=100, N=16, C=256, H=256)
    >>> parse_shape("50,4,32,64").label
    '50,4,32,64'
    """
    if isinstance(text, Shape):
        return text
    key = str(text).strip()
    if key.upper() in SHAPES:
        return SHAPES[key.upper()]
    if key.lower() == QUICK_SHAPE.name:
        return QUICK_SHAPE
    parts = key.replace(" ", "").split(",")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"bench: shape {text!r} is neither a reference shape ({', '.join(SHAPES)}) "
                         "nor 'T,N,C,H' with four positive integers")
    return Shape(",".join(map(str, dims)), *dims)


def flops(cell, shape, mode):
    """Effective floating-point operations of one call (docs/design.md, "Performance method").

    Forward = ``2·T·N·(C+H)·G·H`` with G = 4 (LSTM), 3 (GRU), 2 (Li-GRU, SLi-GRU), 1 (RNN) gate
    blocks — the two matrix products per step, pointwise work (and normalization) not counted; training (forward + backward to every
    parameter and the input) = 3× forward, the usual GEMM count of backpropagation.

    Examples
    --------
    >>> flops("lstm", SHAPES["A"], "inference")
    26214400
    >>> flops("gru", parse_shape("1,1,1,1"), "training")
    36
    """
    if cell not in GATES:
        raise ValueError(f"flops: cell {cell!r} is not one of {ALL_CELLS}")
    if mode not in MODES:
        raise ValueError(f"flops: mode {mode!r} is not one of {MODES}")
    s = parse_shape(shape)
    forward = 2 * s.T * s.N * (s.C + s.H) * GATES[cell] * s.H
    return forward * (3 if mode == "training" else 1)


def make_problem(cell, shape, dtype=np.float32, seed=0):
    """Weights (state_dict of a fresh fastrnn layer, PyTorch's init) and an input ``[T, N, C]``.

    Examples
    --------
    >>> w, x = make_problem("gru", "3,2,4,5")
    >>> w["weight_hh_l0"].shape, x.shape, x.dtype
    ((15, 5), (3, 2, 4), dtype('float32'))
    """
    s = parse_shape(shape)
    dtype = V.as_dtype(dtype, "bench: dtype")
    layer = _LAYERS[cell](s.C, s.H, dtype=dtype, rng=seed)
    x = np.random.default_rng(seed + 1).standard_normal((s.T, s.N, s.C)).astype(dtype)
    return layer.state_dict(), x


def numpy_forward(cell, weights, x):
    """Single-layer forward in plain NumPy: the peer "numpy" and, in float64, the output oracle.

    The input projection of all ``T·N`` rows is one matmul before the loop; each step does one
    ``h @ W_hh.T`` and the cell's pointwise math (docs/design.md, "Conventions", PyTorch gate order; GRU with
    the reset gate applied after the recurrent product, like torch), σ(v) = 1 / (1 + e^(-v)).
    Computes in the dtype of ``x``; returns the outputs ``[T, N, H]``.

    Examples
    --------
    >>> w, x = make_problem("lstm", "5,3,4,6")
    >>> import fastrnn
    >>> layer = fastrnn.LSTM(4, 6).eval(); _ = layer.load_state_dict(w)
    >>> bool(np.allclose(numpy_forward("lstm", w, x), layer(x)[0], atol=1e-5))
    True
    """
    T, N, C = x.shape
    w_ih, w_hh = weights["weight_ih_l0"], weights["weight_hh_l0"]
    b_ih, b_hh = weights["bias_ih_l0"], weights["bias_hh_l0"]
    H = w_hh.shape[1]
    if cell == "gru":  # b_hn stays inside r ⊙ (W_hn h + b_hn)
        bias = b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H, b_hh.dtype)])
        b_hn = b_hh[2 * H:]
    else:
        bias = b_ih + b_hh
    gx = (x.reshape(T * N, C) @ w_ih.T + bias).reshape(T, N, -1)
    w_hh_t = w_hh.T
    h = np.zeros((N, H), x.dtype)
    c = np.zeros((N, H), x.dtype)
    out = np.empty((T, N, H), x.dtype)
    for t in range(T):
        gh = h @ w_hh_t
        if cell == "lstm":
            g = gx[t] + gh
            i, f, o = (1 / (1 + np.exp(-g[:, k * H:(k + 1) * H])) for k in (0, 1, 3))
            c = f * c + i * np.tanh(g[:, 2 * H:3 * H])
            h = o * np.tanh(c)
        elif cell == "gru":
            rz = 1 / (1 + np.exp(-(gx[t, :, :2 * H] + gh[:, :2 * H])))
            r, z = rz[:, :H], rz[:, H:]
            n = np.tanh(gx[t, :, 2 * H:] + r * (gh[:, 2 * H:] + b_hn))
            h = (1 - z) * n + z * h
        else:
            h = np.tanh(gx[t] + gh)
        out[t] = h
    return out


# ----------------------------------------------------------------------------------------------
# Implementations. Each is a class built as ``cls(cell, mode, weights, x, threads)`` (raising
# Unavailable when it cannot run) with ``step()`` (one timed call) and ``result()`` (a dict of
# arrays: "output", and in training "grad_x" and "grad_<param name>"). ``modes`` and ``cells`` list
# the modes and cells it supports.

_LAYERS = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN, "ligru": fastrnn.LiGRU,
           "sligru": fastrnn.SLiGRU}


def _optional_import(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Unavailable(f"{name} is not importable ({exc})") from exc


class FastrnnImpl:
    """fastrnn layer: inference = eval-mode forward (no cache); training = zero_grad, forward,
    ``backward(ones)`` (gradients of ``out.sum()`` to every parameter and the input)."""

    name = "fastrnn"
    modes = MODES
    cells = ALL_CELLS
    device = "cpu"

    def __init__(self, cell, mode, weights, x, threads):
        C, H = weights["weight_ih_l0"].shape[1], weights["weight_hh_l0"].shape[1]
        self.layer = _LAYERS[cell](C, H, dtype=x.dtype, device=self.device)
        self.layer.load_state_dict(weights)
        self.layer.train(mode == "training")
        self.x = x
        self.ones = np.ones((x.shape[0], x.shape[1], H), x.dtype)

    def step(self):
        if self.layer.training:
            self.layer.zero_grad()
            self.layer(self.x)
            self.layer.backward(self.ones)
        else:
            self.layer(self.x)

    def result(self):
        out = self.layer(self.x)[0]
        res = {"output": out}
        if self.layer.training:
            self.layer.zero_grad()
            res["grad_x"] = self.layer.backward(self.ones)[0]
            res.update((f"grad_{k}", g.copy()) for k, g in self.layer.grads.items())
        return res


class TorchImpl:
    """``torch.nn.LSTM/GRU/RNN``: inference under ``torch.no_grad()``; training = zero the
    (preallocated) gradients, forward with ``x.requires_grad``, ``out.sum().backward()``.
    With ``full_step`` (the ``--frontend torch`` comparison) training is a whole step: MSE loss
    against a fixed target, backward and an SGD update."""

    name = "torch"
    modes = MODES
    cells = CELLS
    full_step = False
    device = "cpu"

    def _module_class(self, torch, cell):
        return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]

    def __init__(self, cell, mode, weights, x, threads):
        torch = self.torch = _optional_import("torch")
        torch.set_num_threads(threads)
        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[x.dtype]
        C, H = weights["weight_ih_l0"].shape[1], weights["weight_hh_l0"].shape[1]
        self.module = self._module_class(torch, cell)(C, H).to(tdtype)
        self.module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        self.module.to(self.device)
        self._set_input(mode, torch.from_numpy(x.copy()).to(self.device))
        if self.training:
            if self.full_step:
                self.target = torch.zeros((x.shape[0], x.shape[1], H), dtype=tdtype, device=self.device)
                self.optimizer = torch.optim.SGD(self.module.parameters(), lr=1e-4)

    def _set_input(self, mode, x):
        self.training = mode == "training"
        self.module.train(self.training)
        self.x = x
        if self.training:
            # Gradients preallocated and zeroed in place, like fastrnn's .grads, so both sides
            # do the same work per step and allocate the same buffers before a memory baseline.
            self.x.requires_grad_(True)
            for p in [self.x, *self.module.parameters()]:
                p.grad = self.torch.zeros_like(p)

    def _host(self, t):
        return t.detach().cpu().numpy().copy()

    def _param_grads(self):
        return ((k, p.grad) for k, p in self.module.named_parameters())

    def step(self):
        self._step()
        if self.device == "cuda":  # a call is timed until its GPU work is done
            self.torch.cuda.synchronize()

    def _step(self):
        if not self.training:
            with self.torch.no_grad():
                self.module(self.x)
            return
        if self.full_step:
            self.optimizer.zero_grad(set_to_none=False)
            self.x.grad.zero_()
            out = self.module(self.x)[0]
            self.torch.nn.functional.mse_loss(out, self.target).backward()
            self.optimizer.step()
            return
        self.module.zero_grad(set_to_none=False)
        self.x.grad.zero_()
        self.module(self.x)[0].sum().backward()

    def result(self):
        if not self.training:
            with self.torch.no_grad():
                return {"output": self._host(self.module(self.x)[0])}
        self.module.zero_grad(set_to_none=False)
        self.x.grad.zero_()
        out = self.module(self.x)[0]
        out.sum().backward()
        res = {"output": self._host(out), "grad_x": self._host(self.x.grad)}
        res.update((f"grad_{k}", self._host(g)) for k, g in self._param_grads())
        return res


class FastrnnTorchImpl(TorchImpl):
    """``fastrnn.torch.LSTM/GRU/RNN`` (the torch front end) in a full training step."""

    name = "fastrnn.torch"
    full_step = True

    def _module_class(self, torch, cell):
        return getattr(_fastrnn_torch(), {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell])


class TorchStepImpl(TorchImpl):
    """``torch.nn`` in the full training step of ``--frontend torch``."""

    full_step = True


def _fastrnn_torch():
    """The ``fastrnn.torch`` front end, or BenchError saying why it cannot be used."""
    try:
        module = importlib.import_module("fastrnn.torch")
    except ImportError as exc:
        raise BenchError(f"--frontend torch compares fastrnn.torch modules with torch.nn, but fastrnn.torch "
                         f"is not importable here ({exc}); use the default --frontend numpy") from exc
    missing = [n for n in ("LSTM", "GRU", "RNN") if not hasattr(module, n)]
    if missing:
        raise BenchError(f"--frontend torch: fastrnn.torch has no {', '.join(missing)}")
    return module


# ONNX gate order from torch's: LSTM i,f,g,o -> i,o,f,c ; GRU r,z,n -> z,r,h.
_ONNX_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}


def onnx_model(cell, weights, x):
    """One ONNX ``LSTM`` / ``GRU`` (``linear_before_reset=1``, torch's variant) / ``RNN`` (tanh)
    node with the weights as initializers, input ``X [T, N, C]``, output ``Y [T, 1, N, H]``:
    (the checked ModelProto, the op's name)."""
    onnx = _optional_import("onnx")
    from onnx import TensorProto, helper, numpy_helper

    T, N, C = x.shape
    H = weights["weight_hh_l0"].shape[1]
    order = _ONNX_ORDER[cell]

    def reorder(a):
        blocks = np.split(np.asarray(a), len(order), axis=0)
        return np.concatenate([blocks[k] for k in order], axis=0)

    inits = {"W": reorder(weights["weight_ih_l0"])[None], "R": reorder(weights["weight_hh_l0"])[None],
             "B": np.concatenate([reorder(weights["bias_ih_l0"]), reorder(weights["bias_hh_l0"])])[None]}
    attrs = {"hidden_size": H}
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    if cell == "rnn":
        attrs["activations"] = ["Tanh"]
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph(
        [helper.make_node(op, ["X", "W", "R", "B"], ["Y"], **attrs)], "fastrnn_bench",
        [helper.make_tensor_value_info("X", elem, [T, N, C])],
        [helper.make_tensor_value_info("Y", elem, [T, 1, N, H])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # what ORT and OpenVINO releases of the last years all read
    onnx.checker.check_model(model)
    return model, op


class OnnxRuntimeImpl:
    """ONNX Runtime CPU on `onnx_model`'s node; ``intra_op_num_threads`` = threads,
    ``inter_op_num_threads`` = 1. Inference only."""

    name = "onnxruntime"
    modes = ("inference",)
    cells = CELLS

    def __init__(self, cell, mode, weights, x, threads):
        ort = _optional_import("onnxruntime")
        T, N, C = x.shape
        H = weights["weight_hh_l0"].shape[1]
        model, op = onnx_model(cell, weights, x)
        model = self._transform(model, op)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # e.g. no float64 kernel for this op
            raise Unavailable(f"onnxruntime cannot run {op} in {x.dtype}: {str(exc).splitlines()[0]}") from exc
        self.feed = {"X": x}
        self.shape = (T, N, H)

    def _transform(self, model, op):
        return model

    def step(self):
        self.session.run(None, self.feed)

    def result(self):
        return {"output": self.session.run(None, self.feed)[0].reshape(self.shape)}


class OpenVinoImpl:
    """OpenVINO's CPU plugin (the ``openvino`` package) compiling the same ONNX model as ONNX
    Runtime, at the float32 precision hint (``INFERENCE_PRECISION_HINT``; OpenVINO's default on
    CPUs with bf16 is bf16), ``threads`` inference threads, one stream, the latency hint.
    Inference only."""

    name = "openvino"
    modes = ("inference",)
    cells = CELLS
    hint = "f32"

    def __init__(self, cell, mode, weights, x, threads):
        ov = _optional_import("openvino")
        if x.dtype != np.float32:
            raise Unavailable("OpenVINO's CPU plugin computes in float32 at most")
        import tempfile

        model, _ = onnx_model(cell, weights, x)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(model.SerializeToString())
            core = ov.Core()
            config = {"INFERENCE_PRECISION_HINT": self.hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                      "PERFORMANCE_HINT": "LATENCY"}
            try:
                self.compiled = core.compile_model(core.read_model(path), "CPU", config)
            except RuntimeError as exc:  # e.g. a precision this CPU has no kernels for
                raise Unavailable(f"OpenVINO cannot compile {cell} at {self.hint}: {str(exc).splitlines()[0]}") from exc
        runs_at = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16"
        if self.hint == "bf16" and runs_at != "bf16":  # no bf16 kernels here: it falls back silently
            raise Unavailable(f"OpenVINO's CPU plugin runs the bf16 hint in {runs_at} on this CPU")
        self.request = self.compiled.create_infer_request()
        self.x = x
        self.shape = (x.shape[0], x.shape[1], weights["weight_hh_l0"].shape[1])

    def step(self):
        self.request.infer({0: self.x})

    def result(self):
        self.request.infer({0: self.x})
        return {"output": np.array(self.request.get_output_tensor(0).data).reshape(self.shape)}


# --precision int8: dynamic quantization, inference only. Their outputs are held to the
# quantization error (INT8_RTOL of the largest magnitude), not to float32's RTOL: torch's
# per-tensor int8 LSTM is 5-6 % off at C and D, fastrnn's 2-3 %; a wrong product is off by ~100 %.
INT8_RTOL = 0.1


class FastrnnInt8Impl(FastrnnImpl):
    """fastrnn's int8 inference: ``layer.quantize_dynamic()`` (docs/precision.md)."""

    name = "fastrnn-int8"
    modes = ("inference",)
    precision, rtol = "int8", INT8_RTOL

    def __init__(self, cell, mode, weights, x, threads):
        if x.dtype != np.float32:
            raise Unavailable("int8 quantizes float32 layers")
        super().__init__(cell, mode, weights, x, threads)
        self.layer = self.layer.quantize_dynamic()


class TorchInt8Impl(TorchImpl):
    """torch's dynamic int8 (``torch.ao.quantization.quantize_dynamic``, per-tensor weights;
    deprecated in torch 2.13, its warnings silenced here)."""

    name = "torch-int8"
    modes = ("inference",)
    cells = ("lstm", "gru")  # torch has no dynamic-quantized RNN
    precision, rtol = "int8", INT8_RTOL

    def __init__(self, cell, mode, weights, x, threads):
        if x.dtype != np.float32:
            raise Unavailable("int8 quantizes float32 modules")
        super().__init__(cell, mode, weights, x, threads)
        torch = self.torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # it swaps submodules only: a bare module would come back unquantized
            self.module = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(self.module), {type(self.module)}, dtype=torch.qint8)[0]
        if not type(self.module).__module__.startswith("torch.ao.nn.quantized"):
            raise Unavailable(f"torch's quantize_dynamic left {type(self.module).__name__} unquantized")


# --precision bf16: bf16 operands with float32 sums. 8 significant bits: ~1e-3 of the outputs'
# scale, a few 1e-2 where errors accumulate; held to BF16_RTOL.
BF16_RTOL = 0.05


class FastrnnBf16Impl(FastrnnImpl):
    """fastrnn's bf16 compute: ``compute_dtype="bfloat16"``, inference and training (float32
    parameters and gradients; docs/precision.md)."""

    name = "fastrnn-bf16"
    modes = MODES
    precision, rtol = "bf16", BF16_RTOL

    def __init__(self, cell, mode, weights, x, threads):
        if x.dtype != np.float32:
            raise Unavailable("bf16 compute rounds float32 layers")
        super().__init__(cell, mode, weights, x, threads)
        self.layer.compute_dtype = "bfloat16"


class TorchBf16Impl(TorchImpl):
    """torch with bf16 parameters and input (``module.to(torch.bfloat16)``; oneDNN where it has a
    bf16 RNN), inference and training (bf16 gradients)."""

    name = "torch-bf16"
    modes = MODES
    precision, rtol = "bf16", BF16_RTOL

    def __init__(self, cell, mode, weights, x, threads):
        if x.dtype != np.float32:
            raise Unavailable("bf16 from float32 problems only")
        super().__init__(cell, mode, weights, x, threads)
        self.module.to(self.torch.bfloat16)
        self._set_input(mode, self.x.detach().to(self.torch.bfloat16))
        try:
            self.result()
        except RuntimeError as exc:  # e.g. no bf16 kernel for this op on this CPU
            raise Unavailable(f"torch cannot run {type(self.module).__name__} in bf16 here: "
                              f"{str(exc).splitlines()[0]}") from exc

    def _host(self, t):
        return t.detach().float().cpu().numpy().copy()


class TorchAutocastImpl(TorchImpl):
    """torch's float32 module under ``torch.autocast("cpu", dtype=torch.bfloat16)``, inference
    and training (float32 parameters and gradients, autocast's usual training setup)."""

    name = "torch-autocast"
    modes = MODES
    precision, rtol = "bf16", BF16_RTOL

    def __init__(self, cell, mode, weights, x, threads):
        super().__init__(cell, mode, weights, x, threads)
        try:
            self.result()
        except RuntimeError as exc:  # e.g. no bf16 kernel for this op on this CPU
            raise Unavailable(f"torch cannot run {type(self.module).__name__} under bf16 autocast here: "
                              f"{str(exc).splitlines()[0]}") from exc

    def _step(self):
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16):
            super()._step()

    def result(self):
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16):
            res = super().result()
        return {k: v.astype(np.float32) for k, v in res.items()}

    def _host(self, t):
        return t.detach().float().cpu().numpy().copy()


class OpenVinoBf16Impl(OpenVinoImpl):
    """OpenVINO at its bf16 precision hint (its default on CPUs with AVX512-BF16 or AMX)."""

    name = "openvino-bf16"
    hint = "bf16"
    precision, rtol = "bf16", BF16_RTOL


class OnnxRuntimeInt8Impl(OnnxRuntimeImpl):
    """ONNX Runtime's dynamic int8 LSTM (``onnxruntime.quantization.quantize_dynamic``, which
    turns the LSTM node into the contrib op ``DynamicQuantizeLSTM``; it has no int8 GRU or RNN)."""

    name = "onnxruntime-int8"
    cells = ("lstm",)
    precision, rtol = "int8", INT8_RTOL

    def _transform(self, model, op):
        import tempfile

        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
            with open(src, "wb") as f:
                f.write(model.SerializeToString())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.disable(logging.WARNING)  # its advice to pre-process, on the root logger
                try:
                    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
                finally:
                    logging.disable(logging.NOTSET)
            quantized = onnx.load(dst)
        if not any(n.op_type == "DynamicQuantizeLSTM" for n in quantized.graph.node):
            raise Unavailable(f"onnxruntime's quantize_dynamic left the {op} in float32")
        return quantized


class NumpyImpl:
    """The hand-written NumPy forward (`numpy_forward`). Inference only."""

    name = "numpy"
    modes = ("inference",)
    cells = CELLS

    def __init__(self, cell, mode, weights, x, threads):
        self.cell, self.weights, self.x = cell, dict(weights), x

    def step(self):
        numpy_forward(self.cell, self.weights, self.x)

    def result(self):
        return {"output": numpy_forward(self.cell, self.weights, self.x)}


class SpeechBrainImpl(TorchImpl):
    """SpeechBrain's ``LiGRU`` / ``SLiGRU`` (``speechbrain.nnet.RNN``) at its defaults (1 layer,
    unidirectional, batch norm of the input projection, ReLU, no dropout), batch-first input;
    inference and training as `TorchImpl`. SpeechBrain runs the time loop in Python (its
    ``LiGRU_Layer._ligru_cell``)."""

    name = "speechbrain"
    cells = LIGRU_CELLS
    # fastrnn's parameter / buffer names -> SpeechBrain's (layer 0; SLi-GRU adds nothing at its defaults)
    NAMES = {"weight_ih_l0": "rnn.0.w.weight", "weight_hh_l0": "rnn.0.u.weight", "norm_weight_l0": "rnn.0.norm.weight",
             "norm_bias_l0": "rnn.0.norm.bias", "norm_running_mean_l0": "rnn.0.norm.running_mean",
             "norm_running_var_l0": "rnn.0.norm.running_var"}

    def __init__(self, cell, mode, weights, x, threads):
        torch = self.torch = _optional_import("torch")
        sb = _speechbrain.load()
        if sb is None:
            raise Unavailable("SpeechBrain is not installed (pip install --no-deps speechbrain==1.1.2)")
        torch.set_num_threads(threads)
        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[x.dtype]
        T, N, C = x.shape
        H = weights["weight_hh_l0"].shape[1]
        self.module = (sb.SLiGRU if cell == "sligru" else sb.LiGRU)(hidden_size=H, input_shape=(N, T, C)).to(tdtype)
        state = self.module.state_dict()
        state.update({sb_name: torch.from_numpy(np.array(weights[name])) for name, sb_name in self.NAMES.items()})
        self.module.load_state_dict(state)
        self._set_input(mode, torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))

    def _host(self, t):  # batch-first [N, T, H] -> time-major
        a = t.detach().numpy()
        return (a.transpose(1, 0, 2) if a.ndim == 3 else a).copy()

    def _param_grads(self):
        params = dict(self.module.named_parameters())
        return ((name, params[sb_name].grad) for name, sb_name in self.NAMES.items() if sb_name in params)


IMPLS = {"fastrnn": FastrnnImpl, "torch": TorchImpl, "onnxruntime": OnnxRuntimeImpl, "openvino": OpenVinoImpl,
         "numpy": NumpyImpl, "speechbrain": SpeechBrainImpl}
PRECISIONS = ("int8", "bf16")  # --precision: reduced-precision rows beside float32's
# Per precision: fastrnn's implementation, and each peer's by the peer it belongs to.
PRECISION_IMPLS = {"int8": ({"fastrnn-int8": FastrnnInt8Impl},
                            {"torch": {"torch-int8": TorchInt8Impl},
                             "onnxruntime": {"onnxruntime-int8": OnnxRuntimeInt8Impl}}),
                   "bf16": ({"fastrnn-bf16": FastrnnBf16Impl},
                            {"torch": {"torch-bf16": TorchBf16Impl, "torch-autocast": TorchAutocastImpl},
                             "openvino": {"openvino-bf16": OpenVinoBf16Impl}})}
FRONTEND_IMPLS = {"fastrnn.torch": FastrnnTorchImpl, "torch": TorchStepImpl}
# --device cuda: fastrnn's CUDA backend against torch on the GPU (cuDNN); the NumPy layer copies
# its arrays to the GPU and back in every call, fastrnn.torch runs zero-copy.
CUDA_IMPLS = {name: type(cls.__name__ + "Cuda", (cls,), {"device": "cuda"})
              for name, cls in (("fastrnn", FastrnnImpl), ("torch", TorchImpl))}
CUDA_FRONTEND_IMPLS = {name: type(cls.__name__ + "Cuda", (cls,), {"device": "cuda"})
                       for name, cls in FRONTEND_IMPLS.items()}


# ----------------------------------------------------------------------------------------------
# Threads, machine, GEMM rate

@contextlib.contextmanager
def _threads(n):
    """fastrnn, torch (when imported) and NumPy's BLAS (via threadpoolctl) at ``n`` threads;
    restores the previous settings. ONNX Runtime gets ``n`` per session."""
    torch = sys.modules.get("torch")
    previous = (fastrnn.get_num_threads(), torch.get_num_threads() if torch else None)
    limiter = None
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    try:
        if threadpoolctl is not None:
            limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        fastrnn.set_num_threads(n)  # after the limiter: fastrnn sets its own BLAS pool itself
        if torch:
            torch.set_num_threads(n)
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        fastrnn.set_num_threads(previous[0])
        if torch:
            torch.set_num_threads(previous[1])


def gemm_rate(dtype=np.float32, size=2048, samples=3, max_foreign_load=math.inf):
    """Median GFLOP/s of ``size³`` NumPy matmuls (``2·size³`` flop each) in ``dtype`` at the
    current thread count: the "peak" the benchmark's percentages refer to. A matmul during
    which other processes used more than ``max_foreign_load`` cores is re-taken (≤ 2×).

    Examples
    --------
    >>> gemm_rate(size=32, samples=1) > 0
    True
    """
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
    out = np.empty_like(a)

    def matmul():
        np.matmul(a, b, out=out)

    matmul()  # warm-up
    times = [_sample(matmul, 1, max_foreign_load)[0] for _ in range(samples)]
    return 2 * size**3 / statistics.median(times) / 1e9


def precision_gemm_rates(N=96, depth=512, rows=256, samples=5):
    """Operations per second (GFLOP/s, GOP/s for int8) of fastrnn's own bf16 and int8 GEMM kernels
    on one thread, operands in cache: ``[N, depth] x [depth, rows]``, ``2·N·depth·rows`` operations,
    median of ``samples``. ``{"bf16": (rate, path), "int8": (rate, path)}``, the path being
    "avx512_bf16", "avx512_vnni" or "portable" (the exact emulation, much slower). The peak that
    reduced precision is measured against, as SGEMM's is for float32.

    >>> sorted(precision_gemm_rates(N=6, depth=16, rows=16, samples=1))
    ['bf16', 'int8']
    """
    C = fastrnn._C
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, depth)).astype(np.float32)
    w = rng.standard_normal((rows, depth)).astype(np.float32)
    cols = -(-rows // 16) * 16
    dp = depth + depth % 2
    a16 = np.zeros((N, dp), np.uint16)
    a16[:, :depth] = C._bf16_round(x)
    p16 = C._bf16_pack(w)
    packed, scale, wsum = C._int8_quantize_weights(w)
    q, t = C._int8_quantize_rows(x)
    out = np.zeros((N, cols), np.float32)
    kernels = {"bf16": (lambda: C._bf16_gemm(a16, p16, out), C._bf16_path()),
               "int8": (lambda: C._int8_gemm(q, t, packed, scale, wsum, out), C._int8_path())}
    rates = {}
    for name, (run, path) in kernels.items():
        t0 = time.perf_counter()
        run()
        reps = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-9)))
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            times.append((time.perf_counter() - t0) / reps)
        rates[name] = (2 * N * depth * rows / statistics.median(times) / 1e9, path)
    return rates


def _cpu_info():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "stepping", "cpu cores", "flags") \
                        and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    flags = set(info.pop("flags", "").split())
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
            "physical_cores": int(info["cpu cores"]) if "cpu cores" in info else None,
            "logical_cpus": os.cpu_count(),
            "simd": [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "neon", "asimd") if f in flags]}


def _versions(modules):
    versions = {"python": platform.python_version(), "fastrnn": fastrnn.__version__, "numpy": np.__version__}
    for name in modules:
        mod = sys.modules.get(name)
        versions[name] = getattr(mod, "__version__", "?") if mod else None
    if "speechbrain" in modules:  # loaded as its RNN file alone (fastrnn.bench.speechbrain): no module to ask
        versions["speechbrain"] = _speechbrain.version()
    return versions


def _numpy_blas():
    try:
        import threadpoolctl
    except ImportError:
        return None
    for lib in threadpoolctl.threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            return f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')})"
    return None


# ----------------------------------------------------------------------------------------------
# Timing

def _busy_seconds():
    """CPU seconds all processes have spent busy (user+nice+system+irq+softirq), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


# Pause before each sample: the previous implementation's idle pool threads keep spinning for a
# while after its last call (OpenBLAS ~0.1 s, ONNX Runtime and OpenMP less) and would take cores
# from the next one; with 2 threads that made both fastrnn and torch up to 3x slower.
_SETTLE_S = 0.15


def _sample(step, inner, max_foreign_load):
    """Mean seconds per call over ``inner`` calls, the other processes' load, and retakes."""
    for attempt in range(_RETAKES + 1):
        time.sleep(_SETTLE_S)
        busy0, own0, t0 = _busy_seconds(), time.process_time(), time.perf_counter()
        for _ in range(inner):
            step()
        wall = time.perf_counter() - t0
        own, busy1 = time.process_time() - own0, _busy_seconds()
        foreign = None if busy0 is None else max(0.0, (busy1 - busy0 - own) / wall)
        if foreign is None or foreign <= max_foreign_load:
            break
    return wall / inner, foreign, attempt


def _calibrate(step, min_time):
    """Warm up, then the number of calls that lasts about ``min_time``, and one call's time."""
    step()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time / 4 or n >= 1 << 20:
            per_call = elapsed / n
            return max(1, math.ceil(min_time / per_call)), per_call
        n *= 2


def _round_robin(steps, repeats, min_time, max_foreign_load):
    """Samples of every step function, taken in rounds with a rotating order."""
    inner, per_call = {}, {}
    for name, step in steps.items():
        time.sleep(_SETTLE_S)
        inner[name], per_call[name] = _calibrate(step, min_time)
    if per_call and max(per_call.values()) >= 1.0:
        repeats = min(repeats, 3)  # huge shapes: fewer rounds, each already one long call
    names = list(steps)
    samples = {name: [] for name in names}
    for r in range(repeats):
        k = r % max(1, len(names))
        for name in names[k:] + names[:k]:
            samples[name].append(_sample(steps[name], inner[name], max_foreign_load))
    return samples, inner


def _agreement(res, oracle):
    """Largest |res - oracle| over the arrays both have, absolute and relative to max|oracle|."""
    worst = {"max_abs_diff": 0.0, "rel_diff": 0.0, "checked": []}
    for key, ref in oracle.items():
        if key not in res:
            continue
        got = np.asarray(res[key], np.float64)
        worst["checked"].append(key)
        if got.shape != ref.shape:
            return {**worst, "max_abs_diff": math.inf, "rel_diff": math.inf, "worst": key}
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        diff = math.inf if math.isnan(diff) else diff
        rel = diff / max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
        if rel >= worst["rel_diff"]:
            worst.update(max_abs_diff=diff, rel_diff=rel, worst=key)
    if "output" not in worst["checked"]:
        return {**worst, "max_abs_diff": math.inf, "rel_diff": math.inf, "worst": "output (missing)"}
    return worst


def _oracles(cell, weights, x, want_grads, notes):
    """float64 outputs (NumPy forward) and, when torch is installed, float64 gradients; for the
    Li-GRU cells the float64 reference of ``fastrnn.core.reference`` gives both."""
    w64 = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    x64 = x.astype(np.float64)
    if cell in LIGRU_CELLS:
        return _ligru_oracles(cell, w64, x64)
    forward = {"output": numpy_forward(cell, w64, x64)}
    training = dict(forward)
    if want_grads:
        try:
            training = TorchImpl(cell, "training", w64, x64, threads=1).result()
            training["output"] = forward["output"]
        except Unavailable:
            note = "training gradients not checked against an oracle (torch is not installed)"
            if note not in notes:
                notes.append(note)
    return {"inference": forward, "training": training}


def _ligru_oracles(cell, w64, x64):
    running = {k: v.copy() for k, v in w64.items() if "running" in k}
    infer = _reference.ligru_forward(cell, x64, w64, training=False, running=running)[0]
    out, _, cache = _reference.ligru_forward(cell, x64, w64, training=True, running=running)
    grad_x, _, grads = _reference.ligru_backward(cache, np.ones_like(out))
    training = {"output": out, "grad_x": grad_x, **{f"grad_{k}": v for k, v in grads.items()}}
    return {"inference": {"output": infer}, "training": training}


def _rss_mb():
    """(current, peak) resident set size of this process in MiB.

    Linux: VmRSS / VmHWM of /proc/self/status. Not ru_maxrss: Linux carries the peak of the
    parent's memory through subprocess's vfork + exec into the child's ru_maxrss. Elsewhere
    ru_maxrss (bytes on macOS, KiB otherwise) stands for both.
    """
    try:
        with open("/proc/self/status") as f:
            kib = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                   if k in ("VmRSS", "VmHWM")}
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return peak, peak


def _memory_child(spec_json):
    """Runs in a fresh interpreter: print the RSS baseline and the peak over it of training steps.

    Cold (``warm`` false): the first step, over the RSS after imports, weights, input and gradient
    buffers; it includes one-time initialisation (torch loads and initialises its CPU kernels
    lazily: most of its first-step figure at small shapes). Warm: first a training step of the
    same implementation on a 2-step, batch-1 slice of the input, which does that initialisation
    without keeping this problem's buffers; then the baseline, then two steps of the problem.
    """
    spec = json.loads(spec_json)
    shape = Shape(**spec["shape"])
    weights, x = make_problem(spec["cell"], shape, spec["dtype"], spec["seed"])
    impls = FRONTEND_IMPLS if spec["frontend"] == "torch" else IMPLS
    with _threads(spec["threads"]):
        impl = impls[spec["impl"]](spec["cell"], "training", weights, x, spec["threads"])
        if spec["warm"]:
            impls[spec["impl"]](spec["cell"], "training", weights, np.ascontiguousarray(x[:2, :1]),
                                spec["threads"]).step()
        base = _rss_mb()[0]
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: the peak (VmHWM) restarts from the current RSS
        for _ in range(2 if spec["warm"] else 1):
            impl.step()
        peak = _rss_mb()[1]
    print(json.dumps({"base_mb": base, "peak_mb": peak}))


def _measure_memory(impl, cell, shape, threads, dtype, seed, frontend):
    """Training memory, each figure from a fresh process: ({"first_mb": peak increase of a cold first
    step, "steady_mb": of two steps after a warm-up, "base_mb": RSS before them}, None), or
    (None, error string)."""
    out = {}
    for warm in (False, True):
        spec = json.dumps({"impl": impl, "cell": cell, "shape": asdict(shape), "threads": threads,
                           "dtype": str(dtype), "seed": seed, "frontend": frontend, "warm": warm})
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = "import sys; from fastrnn.bench.engine import _memory_child; _memory_child(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"memory child failed: {tail}"
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        out["steady_mb" if warm else "first_mb"] = max(0.0, data["peak_mb"] - data["base_mb"])
        out["base_mb"] = data["base_mb"]
    return out, None


# ----------------------------------------------------------------------------------------------
# The run

def run(cells=CELLS, shapes=tuple(SHAPES), threads=(1,), modes=MODES, peers=PEERS, repeats=5,
        min_time=0.15, memory=False, dtype="float32", frontend="numpy", device="cpu",
        max_foreign_load=0.35, gemm_size=2048, seed=0, impls=None, progress=None, precisions=()):
    """Benchmark fastrnn against its peers; returns a JSON-ready dict (see `format_table`).

    Parameters
    ----------
    cells, shapes, threads, modes, peers : sequences
        What to measure: cells from ``CELLS``, shape names of ``SHAPES`` or ``"T,N,C,H"``,
        thread counts, modes ("inference", "training"), peers from ``PEERS``.
    repeats : int
        Rounds (samples per implementation); at most 3 when one call takes ≥ 1 s.
    min_time : float
        Seconds each sample lasts (inner repetitions are calibrated to it).
    memory : bool
        Also measure training peak memory, each in a fresh subprocess (slow).
    dtype : "float32" or "float64"
    frontend : "numpy" or "torch"
        "torch" compares ``fastrnn.torch`` modules with ``torch.nn`` (training = a full step
        with loss and optimizer); BenchError when ``fastrnn.torch`` is not importable.
    device : "cpu" or "cuda"
        "cuda": fastrnn's CUDA backend against torch on the GPU (cuDNN); peers other than torch are
        dropped, and BenchError says why when the backend or torch's CUDA cannot be used.
    max_foreign_load : float
        A sample during which other processes used more cores than this is re-taken (≤ 2×).
    gemm_size : int
        Size of the square NumPy matmul that gives the GEMM rate.
    impls : dict, optional
        Extra or replacement implementations, name -> class (see `FastrnnImpl`); used by the
        tests to inject a wrong one.
    progress : callable, optional
        Called with one line of text after each row.
    precisions : sequence
        Reduced-precision implementations beside float32's, from ``PRECISIONS`` ("int8":
        fastrnn's int8 inference, and torch's dynamic int8 and ONNX Runtime's
        ``DynamicQuantizeLSTM`` when those peers are asked for; "bf16": fastrnn's bf16 inference,
        torch's bf16 module and its autocast). Inference rows only, held to ``INT8_RTOL`` /
        ``BF16_RTOL``; each gets its share of its precision's GEMM peak (``pct_peak``) and its
        ratio to fastrnn's implementation of that precision (``vs_fastrnn_precision``).

    Returns
    -------
    dict with "config", "machine", "versions", "isa", "gemm_gflops" (per thread count), "notes"
    and "rows"; each row has cell, shape, threads, mode, flop and per implementation its
    status ("timed", "rejected", "skipped"), median_ms, samples_ms, gflops, pct_gemm,
    max_abs_diff, rel_diff and, for peers, speedup (median ratio peer/fastrnn) and ratios.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench: unknown device {device!r}; expected 'cpu' or 'cuda'")
    if device == "cuda":
        why = fastrnn.cuda.reason()
        if why is not None:
            raise BenchError(f"--device cuda: fastrnn's CUDA backend cannot be used here: {why}")
        try:
            torch = _optional_import("torch")
        except Unavailable:
            torch = None
        if torch is None or not torch.cuda.is_available():
            raise BenchError("--device cuda compares with torch on the GPU, but torch with CUDA is not available")
    dtype = V.as_dtype(dtype, "bench: dtype")
    shapes = [parse_shape(s) for s in shapes]
    for what, given, allowed in (("cell", cells, ALL_CELLS), ("mode", modes, MODES), ("peer", peers, PEERS)):
        bad = [g for g in given if g not in allowed]
        if bad:
            raise ValueError(f"bench: unknown {what} {bad[0]!r}; expected one of {', '.join(allowed)}")
    threads = [V.check_positive_int(t, "threads", "bench") for t in threads]
    repeats = V.check_positive_int(repeats, "repeats", "bench")
    if not min_time > 0:
        raise ValueError(f"bench: min_time must be > 0 seconds, got {min_time}")

    notes = []
    if frontend == "torch":
        ligru = [c for c in cells if c in LIGRU_CELLS]
        if ligru:
            raise BenchError(f"--frontend torch compares with torch.nn, which has no {ligru[0]}; the Li-GRU rows "
                             "compare fastrnn with SpeechBrain under the default --frontend numpy")
        _fastrnn_torch()
        subject, factories = "fastrnn.torch", dict(FRONTEND_IMPLS)
        dropped = [p for p in peers if p != "torch"]
        if dropped:
            notes.append(f"--frontend torch compares with torch.nn only; ignored peers: {', '.join(dropped)}")
        notes.append("frontend torch: training = one full step (forward, MSE loss, backward, SGD update)")
    elif frontend == "numpy":
        subject = "fastrnn"
        factories = {"fastrnn": FastrnnImpl, **{p: IMPLS[p] for p in peers}}
        for prec in precisions:
            if prec not in PRECISIONS:
                raise ValueError(f"bench: unknown precision {prec!r}; expected one of {', '.join(PRECISIONS)}")
            ours, theirs = PRECISION_IMPLS[prec]
            factories.update(ours)
            for p in peers:
                factories.update(theirs.get(p, {}))
    else:
        raise ValueError(f"bench: unknown frontend {frontend!r}; expected 'numpy' or 'torch'")
    if device == "cuda":
        cuda_impls = CUDA_FRONTEND_IMPLS if frontend == "torch" else CUDA_IMPLS
        dropped = [name for name in factories if name not in cuda_impls]
        factories = {name: cuda_impls[name] for name in factories if name in cuda_impls}
        if dropped:
            notes.append(f"--device cuda compares with torch on the GPU only; ignored peers: {', '.join(dropped)}")
        notes.append("device cuda: % of GEMM rate is relative to the CPU's NumPy GEMM")
        if memory:
            notes.append("--memory measures host memory only; not measured with --device cuda")
            memory = False
    factories.update(impls or {})
    # Imported up front so the header has their versions and _threads controls torch's pool;
    # torch is also the gradient oracle of training mode.
    wanted = ["torch"] if {"torch", "speechbrain"} & set(factories) or "training" in modes else []
    wanted += ["onnx", "onnxruntime"] if "onnxruntime" in factories else []
    for name in wanted:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        notes.append("threadpoolctl is not installed: NumPy's BLAS (numpy peer, GEMM rate) runs at its "
                     "default thread count (pip install threadpoolctl)")

    result = {
        "config": {"cells": list(cells), "shapes": [asdict(s) for s in shapes], "threads": threads,
                   "modes": list(modes), "peers": [n for n in factories if n != subject], "repeats": repeats,
                   "min_time": min_time, "dtype": str(dtype), "frontend": frontend, "subject": subject,
                   "memory": bool(memory), "max_foreign_load": max_foreign_load, "rtol": RTOL,
                   "precisions": list(precisions),
                   "gemm_size": gemm_size},
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {**_cpu_info(), "system": f"{platform.system()} {platform.release()}"},
        "versions": _versions(["torch", "onnxruntime", "onnx", "openvino", "threadpoolctl"]
                              + (["speechbrain"] if "speechbrain" in factories else [])),
        "isa": fastrnn.get_isa(), "available_isas": fastrnn.available_isas(),
        "precision_features": fastrnn.precision_features(),
        "numpy_blas": _numpy_blas(), "gemm_gflops": {}, "notes": notes, "rows": [],
    }
    for n in threads:
        with _threads(n):
            result["gemm_gflops"][str(n)] = gemm_rate(dtype, gemm_size, max_foreign_load=max_foreign_load)
            barrier = _pool_hook("_barrier_ns")
            if n > 1 and barrier:
                result.setdefault("barrier_ns", {})[str(n)] = barrier(n, 2000)

    if dtype == np.float32:
        with _threads(1):
            result["precision_gops"] = {k: list(v) for k, v in precision_gemm_rates().items()}
    if precisions and frontend != "numpy":
        notes.append(f"--precision compares the NumPy layers (--frontend numpy); ignored: {', '.join(precisions)}")

    for cell in cells:
        for shape in shapes:
            weights, x = make_problem(cell, shape, dtype, seed)
            with _threads(1):  # not timed; one thread avoids oversubscribing a busy machine
                oracle = _oracles(cell, weights, x, "training" in modes, notes)
            for n in threads:
                with _threads(n):
                    for mode in modes:
                        row = _bench_row(cell, shape, n, mode, factories, subject, weights, x,
                                         oracle[mode], result, repeats, min_time, max_foreign_load)
                        if memory and mode == "training":
                            _add_memory(row, shape, dtype, seed, frontend)
                        result["rows"].append(row)
                        if progress:
                            progress(_progress_line(row, subject))
    for name, version in _versions(list(result["versions"])).items():  # peers imported by their first row
        if result["versions"].get(name) is None and version is not None:
            result["versions"][name] = version
    return result


def _bench_row(cell, shape, threads, mode, factories, subject, weights, x, oracle, result, repeats,
               min_time, max_foreign_load):
    flop = flops(cell, shape, mode)
    row = {"cell": cell, "shape": asdict(shape), "threads": threads, "mode": mode, "flop": flop, "impls": {}}
    steps = {}
    for name, cls in factories.items():
        if mode not in cls.modes or cell not in getattr(cls, "cells", ALL_CELLS):
            continue
        entry = row["impls"][name] = {"status": "timed"}
        try:
            impl = cls(cell, mode, weights, x, threads)
            res = impl.result()
        except Unavailable as exc:
            entry.update(status="skipped", reason=str(exc))
            continue
        entry.update(_agreement(res, oracle))
        rtol = getattr(cls, "rtol", RTOL)
        if not entry["rel_diff"] <= rtol:
            entry.update(status="rejected", reason=(
                f"{name} disagrees with the float64 oracle: max |diff| {entry['max_abs_diff']:.3g} in "
                f"{entry['worst']} = {entry['rel_diff']:.3g} of its largest magnitude (> {rtol:g}); not timed"))
            continue
        steps[name] = impl.step
    waits = _pool_hook("_wait_stats")
    if waits:
        waits(True)
    samples, inner = _round_robin(steps, repeats, min_time, max_foreign_load)
    if waits and threads > 1:  # fastrnn's pool sent its steps to one thread (threads waited > 1/4)
        row["backoffs"] = waits(True)[3]
    gemm = result["gemm_gflops"][str(threads)]
    base = [t for t, _, _ in samples.get(subject, [])]
    for name, taken in samples.items():
        times = [t for t, _, _ in taken]
        med = statistics.median(times)
        entry = row["impls"][name]
        entry.update(median_ms=med * 1e3, min_ms=min(times) * 1e3, samples_ms=[t * 1e3 for t in times],
                     inner=inner[name], gflops=flop / med / 1e9, pct_gemm=100 * flop / med / 1e9 / gemm,
                     foreign_load=[f for _, f, _ in taken], retaken=sum(a for _, _, a in taken),
                     disturbed=sum(f is not None and f > max_foreign_load for _, f, _ in taken))
        if name != subject and base:
            ratios = [t / b for t, b in zip(times, base)]
            entry.update(speedup=statistics.median(ratios), ratios=ratios)
        precision = getattr(factories[name], "precision", None)
        if precision:  # against its precision's own GEMM peak, and fastrnn's implementation of it
            entry["precision"] = precision
            peak = result.get("precision_gops", {}).get(precision)
            if peak and threads == 1:
                entry["pct_peak"] = 100 * flop / med / 1e9 / peak[0]
            ours = next((n for n, c in factories.items() if n.startswith("fastrnn")
                         and getattr(c, "precision", None) == precision), None)
            if ours and name != ours and ours in samples:
                ratios = [t / b for t, (b, _, _) in zip(times, samples[ours])]
                entry["vs_fastrnn_precision"] = statistics.median(ratios)
    return row


def _pool_hook(name):
    """fastrnn's thread-pool probe `name` (a private hook), or None in a build without it."""
    import fastrnn
    return getattr(fastrnn._C, name, None)


def _add_memory(row, shape, dtype, seed, frontend):
    """Training peak memory of every timed built-in implementation of the row (subprocesses)."""
    known = FRONTEND_IMPLS if frontend == "torch" else IMPLS
    for name, entry in row["impls"].items():
        if entry["status"] == "timed" and name in known:
            mem, err = _measure_memory(name, row["cell"], shape, row["threads"], dtype, seed, frontend)
            if err:
                entry["memory_error"] = err
            else:
                entry.update(peak_mem_mb=mem["steady_mb"], first_mem_mb=mem["first_mb"], base_mem_mb=mem["base_mb"])


def _progress_line(row, subject):
    s = Shape(**row["shape"])
    parts = []
    for name, e in row["impls"].items():
        if e["status"] != "timed":
            parts.append(f"{name} {e['status']}")
        elif name == subject:
            parts.append(f"{name} {_fmt_ms(e['median_ms'])} ms")
        else:
            parts.append(f"{name} {_fmt_ms(e['median_ms'])} ms" +
                         (f" ({e['speedup']:.2f}x)" if "speedup" in e else ""))
    backed = f" [fastrnn's pool backed off to 1 thread {row['backoffs']}x]" if row.get("backoffs") else ""
    return f"{row['cell']} {s.label} {row['threads']}t {row['mode']}: " + ", ".join(parts) + backed


# ----------------------------------------------------------------------------------------------
# Output

def _fmt_ms(v):
    if v is None or not math.isfinite(v):
        return "–"
    digits = max(0, 2 - int(math.floor(math.log10(v)))) if v > 0 else 2
    return f"{v:.{digits}f}"


_SHORT = {"onnxruntime": "ORT", "speechbrain": "SB", "fastrnn-int8": "i8", "torch-int8": "torch-i8",
          "onnxruntime-int8": "ORT-i8", "fastrnn-bf16": "bf16", "torch-bf16": "torch-bf16",
          "torch-autocast": "autocast"}  # column titles


def format_table(result, markdown=False):
    """The header and the results table of `run`'s dict, plain text or Markdown.

    Columns: cell, shape, threads, mode, the subject's ms, GFLOP/s and % of the GEMM rate, then
    for each peer its ms and speedup (peer time / fastrnn time, median of per-round ratios;
    > 1 means fastrnn is faster), then the training peak memory (MiB over the baseline) when
    measured: in steady state, then of the first step. "wrong": output disagreed with the oracle
    (not timed); "skip": not available; "–": not applicable (ONNX Runtime and NumPy are inference
    only; torch.nn, ONNX Runtime and NumPy have no Li-GRU, SpeechBrain has only the Li-GRU cells).

    Examples
    --------
    >>> r = run(cells=["gru"], shapes=["3,1,4,4"], peers=[], modes=["inference"], repeats=1,
    ...         min_time=0.001, gemm_size=32)
    >>> print(next(l for l in format_table(r, markdown=True).splitlines() if l.startswith("| cell")))
    | cell | shape | thr | mode | fastrnn ms | GFLOP/s | % GEMM |
    """
    cfg = result["config"]
    subject = cfg["subject"]
    peers = [p for p in cfg["peers"] if any(p in row["impls"] for row in result["rows"])]  # with a row
    gemm_name = "SGEMM" if cfg["dtype"] == "float32" else "DGEMM"
    mem = cfg["memory"]
    head = ["cell", "shape", "thr", "mode", f"{subject} ms", "GFLOP/s", "% GEMM"]
    for p in peers:
        short = _SHORT.get(p, p)
        head += [f"{short} ms", f"×{short}"]
    mem_impls = [n for n in [subject, *peers] if n in ("fastrnn", "torch", "fastrnn.torch")] if mem else []
    head += [f"mem {n} MiB" for n in mem_impls] + [f"1st step {n} MiB" for n in mem_impls]
    lines = []
    for row in result["rows"]:
        imps = row["impls"]

        def cell_ms(name):
            e = imps.get(name)
            if e is None:
                return "–"
            return {"timed": _fmt_ms(e.get("median_ms")), "rejected": "wrong", "skipped": "skip"}[e["status"]]

        s = imps.get(subject, {})
        line = [row["cell"], Shape(**row["shape"]).label, str(row["threads"]), row["mode"], cell_ms(subject),
                f"{s['gflops']:.1f}" if "gflops" in s else "–", f"{s['pct_gemm']:.0f}%" if "pct_gemm" in s else "–"]
        for p in peers:
            e = imps.get(p, {})
            line += [cell_ms(p), f"{e['speedup']:.2f}×" if "speedup" in e else "–"]
        for key in ("peak_mem_mb", "first_mem_mb"):
            for n in mem_impls:
                v = imps.get(n, {}).get(key)
                line.append(f"{v:.1f}" if v is not None else "–")
        lines.append(line)

    m, v = result["machine"], result["versions"]
    gemm = ", ".join(f"{g:.1f} GFLOP/s at {t} thread{'s' * (t != '1')}" for t, g in result["gemm_gflops"].items())
    others = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "onnx", "openvino", "threadpoolctl", "speechbrain")
                       if v.get(k))
    header = [
        f"fastrnn bench, {result['date']}",
        f"machine: {m['model']} (family/model/stepping {m['family_model_stepping']}), "
        f"{m['logical_cpus']} logical CPUs ({m['physical_cores'] or '?'} cores), SIMD {' '.join(m['simd']) or '?'}; {m['system']}",
        f"versions: python {v['python']}, fastrnn {v['fastrnn']} (isa {result['isa']}), numpy {v['numpy']}"
        + (f" ({result['numpy_blas']})" if result.get("numpy_blas") else "") + (f", {others}" if others else ""),
        f"numpy {gemm_name} {cfg['gemm_size']}³: {gemm}; dtype {cfg['dtype']}",
    ]
    if result.get("precision_gops"):
        sgemm = result["gemm_gflops"].get("1")
        parts = [f"{name} {rate:.1f} {'GOP' if name == 'int8' else 'GFLOP'}/s ({path}"
                 + (f", {rate / sgemm:.2f}× SGEMM" if sgemm else "") + ")"
                 for name, (rate, path) in result["precision_gops"].items()]
        header.append("fastrnn's reduced-precision GEMM kernels (1 thread, 96×512×256 in cache): " + ", ".join(parts))
    header += [
        f"method: round-robin in one process, {cfg['repeats']} rounds × ≥{cfg['min_time']:g} s per sample, "
        f"median ms; ×peer = median per-round ratio peer/{subject} (> 1: {subject} faster)",
    ]
    notes = [f"note: {n}" for n in result["notes"]]
    for row in result["rows"]:
        for name, e in row["impls"].items():
            if e["status"] != "timed":
                notes.append(f"note: {row['cell']} {Shape(**row['shape']).label} {row['threads']}t "
                             f"{row['mode']}: {e['reason']}")
            if e.get("memory_error"):
                notes.append(f"note: {row['cell']} {Shape(**row['shape']).label} {name}: {e['memory_error']}")
    for row in result["rows"]:  # reduced precision: each against float32, its own peak and fastrnn's
        for name, e in row["impls"].items():
            if e.get("precision") and e["status"] == "timed":
                prec, parts = e["precision"], [f"{e['median_ms']:.3g} ms"]
                if e.get("speedup"):
                    parts.append(f"{1 / e['speedup']:.2f}× the speed of {subject}'s float32")
                if "pct_peak" in e:
                    parts.append(f"{e['pct_peak']:.0f}% of the {prec} GEMM peak")
                if "vs_fastrnn_precision" in e:
                    parts.append(f"{e['vs_fastrnn_precision']:.2f}× the time of fastrnn's {prec}")
                notes.append(f"note: {prec} {row['cell']} {Shape(**row['shape']).label} {row['threads']}t: {name} "
                             + ", ".join(parts))
    backed = [row for row in result["rows"] if row.get("backoffs")]
    if backed:
        notes.append("note: fastrnn's thread pool dropped to one thread (over a 1 ms window its threads spent a "
                     "quarter of their time in long waits for each other: more runnable threads than cores) during " +
                     ", ".join(f"{r['cell']} {Shape(**r['shape']).label} {r['threads']}t {r['mode']} "
                               f"({r['backoffs']}x)" for r in backed))
    for n, ns in result.get("barrier_ns", {}).items():
        notes.append(f"note: fastrnn's step barrier costs {ns / 1e3:.2f} us a round trip at {n} threads "
                     f"(one per step phase)")
    timed = [(row, e) for row in result["rows"] for e in row["impls"].values() if e["status"] == "timed"]
    disturbed = [(row, e) for row, e in timed if e.get("disturbed")]
    if disturbed:
        names = dict.fromkeys(f"{r['cell']} {r['shape']['name']} {r['mode']}" for r, _ in disturbed)
        worst = max(f for _, e in disturbed for f in e["foreign_load"] if f is not None)
        notes.append(f"note: other processes used more than {cfg['max_foreign_load']:g} cores during "
                     f"{sum(e['disturbed'] for _, e in disturbed)} of {sum(len(e['samples_ms']) for _, e in timed)} "
                     f"samples even after {_RETAKES} re-takes (up to {worst:.1f} cores), in: {', '.join(names)}; "
                     "absolute times there are less reliable than the same-round ratios")
    if mem:
        notes.append("note: mem = peak RSS increase (MiB) during two training steps in a fresh process, over its "
                     "RSS after imports, model, input, gradient buffers and a warm-up step on a 2-step, batch-1 "
                     "slice (one-time initialisation); 1st step = the same during the first step of a fresh "
                     "process without the warm-up, one-time initialisation included (Linux VmHWM, reset through "
                     "/proc/self/clear_refs; ru_maxrss elsewhere)")
    notes = list(dict.fromkeys(notes))  # once each, in order
    if markdown:
        out = [f"- {h}" for h in header] + [""]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|")
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out + ([""] + [f"- {n[6:]}" for n in notes] if notes else []))
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = [(str.ljust if i < 4 else str.rjust) for i in range(len(head))]
    table = ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths)) for r in [head, *lines]]
    return "\n".join(header + [""] + table + ([""] + notes if notes else []))


# ----------------------------------------------------------------------------------------------
# Command line

def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _shape_arg(text):
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p):
    """Add the bench options to an argparse parser (``python -m fastrnn bench`` and compare.py)."""
    p.add_argument("--cells", nargs="+", choices=ALL_CELLS, default=list(CELLS),
                   help="default: lstm gru rnn; ligru and sligru run at SpeechBrain's defaults "
                        "(1 layer, batch norm, ReLU) against SpeechBrain's modules")
    p.add_argument("--shapes", nargs="+", type=_shape_arg, default=None, metavar="SHAPE",
                   help=f"reference shapes {' '.join(SHAPES)} (T,N,C=H: "
                        + ", ".join(f"{k} {s.T},{s.N},{s.C}" for k, s in SHAPES.items())
                        + ") or custom T,N,C,H (default: all six; --quick: a tiny one)")
    p.add_argument("--threads", dest="thread_counts", nargs="+", type=_positive_int, default=[1], metavar="N",
                   help="thread counts for fastrnn, torch, ONNX Runtime and NumPy's BLAS (default 1)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                   help="implementations to compare with (missing packages are skipped with a note)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="rounds per row (default 5; --quick 3)")
    p.add_argument("--min-time", type=_positive_float, default=None,
                   help="seconds per sample (default 0.15; --quick 0.01)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shape, few short samples")
    p.add_argument("--memory", action="store_true",
                   help="training peak memory per implementation, each in a fresh subprocess (slow)")
    p.add_argument("--json", metavar="PATH", help="write every number (samples, ratios, diffs) as JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the docs)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--precision", dest="precisions", nargs="+", choices=PRECISIONS, default=[],
                   help="also time reduced precision in the same run: int8 inference (fastrnn's quantize_dynamic, "
                        "torch's dynamic int8, ONNX Runtime's DynamicQuantizeLSTM), bf16 inference and training "
                        "(fastrnn's compute_dtype='bfloat16', torch's module.to(bfloat16) and autocast)")
    p.add_argument("--frontend", choices=("numpy", "torch"), default="numpy",
                   help="torch: fastrnn.torch modules vs torch.nn in a full training step")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: fastrnn's CUDA backend vs torch on the GPU (needs both)")
    p.add_argument("--max-foreign-load", type=float, default=0.35, metavar="CORES",
                   help="re-take a sample when other processes used more cores than this (default 0.35)")
    p.add_argument("--streaming", action="store_true",
                   help="latency of one streaming step (layer.stream) against torch's cells, torch with T=1 and "
                        "ONNX Runtime, LSTM and GRU at H=128 and 512 (uses --threads, --peers, --repeats, --json, "
                        "--markdown, --quick)")
    p.add_argument("--stream-batch", type=_positive_int, default=1, metavar="N",
                   help="slots of the streams in --streaming (default 1)")
    return p


def run_args(args):
    """Run from parsed `add_arguments` options: print the table, write JSON; exit status."""
    quick = args.quick
    try:
        result = run(cells=args.cells, shapes=args.shapes or ([QUICK_SHAPE] if quick else list(SHAPES)),
                     threads=args.thread_counts, modes=args.modes, peers=args.peers,
                     repeats=args.repeats or (3 if quick else 5),
                     min_time=args.min_time or (0.01 if quick else 0.15), memory=args.memory,
                     dtype=args.dtype, frontend=args.frontend, device=args.device,
                     max_foreign_load=args.max_foreign_load, gemm_size=256 if quick else 2048,
                     precisions=args.precisions,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    except BenchError as exc:
        print(f"python -m fastrnn bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
    print(format_table(result, markdown=args.markdown))
    return 0


def main(argv=None):
    """``python bench/compare.py [options]`` (same options as ``python -m fastrnn bench``)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m fastrnn bench", description=__doc__.split("\n\n")[0]))
    return run_args(parser.parse_args(argv))
