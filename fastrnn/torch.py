"""PyTorch backend: drop-in ``torch.nn.LSTM/GRU/RNN`` modules that run fastrnn's fused C++ kernels.

Import it explicitly (``import fastrnn.torch``); ``import fastrnn`` never imports torch.

`LSTM`, `GRU` and `RNN` subclass ``torch.nn.LSTM/GRU/RNN`` and override ``forward`` only, so the
constructor, parameter names and shapes, default initialisation ``U(-1/sqrt(H), 1/sqrt(H))``,
``state_dict``, ``repr``, ``train()/eval()``, ``.to()``/``.double()`` and pickling are torch's own:
``load_state_dict`` works both ways unchanged. ``forward`` has torch's signature and outputs
(tensor or ``PackedSequence`` input, unbatched input, ``batch_first``, ``hx``, dropout between
layers in training mode with masks drawn from torch's RNG). The whole stack runs as one
`torch.autograd.Function`: one C++ forward that keeps the training cache and one C++ BPTT call,
on NumPy views of the CPU tensors (no copies of contiguous inputs or weights, no per-step Python,
no autograd graph per step; the GIL is released in the kernels). The equations and gate order are
PyTorch's (docs/design.md, "Conventions"; LSTM: Hochreiter & Schmidhuber 1997; GRU: Cho et al. 2014).
On CUDA tensors the same node runs on fastrnn's CUDA backend when it is built and usable
(`fastrnn.cuda`; zero-copy, on torch's current stream; plain cells), else the call raises
RuntimeError saying why.

`convert` swaps every ``torch.nn.LSTM/GRU/RNN`` in a model for its fastrnn twin (same weights),
`revert` swaps back.

Variants (docs/variants.md): ``LSTM(proj_size=P)`` is LSTMP exactly as torch's;
`LayerNormLSTM` and `LayerNormGRU` are the Haste-formulation LayerNorm cells (torch's
parameters plus LayerNorm gains); the fastrnn-only keywords ``recurrent_dropout``,
``zoneout_h`` (``zoneout_c`` for LSTM) and ``weight_drop`` add the in-kernel regularizers, with
masks drawn from torch's RNG in training mode.

Examples
--------
>>> import torch, fastrnn.torch
>>> _ = torch.manual_seed(0)
>>> lstm = fastrnn.torch.LSTM(3, 5, num_layers=2, dropout=0.2)
>>> out, (h_n, c_n) = lstm(torch.randn(7, 2, 3))
>>> out.sum().backward()                     # one fused BPTT call; gradients land in .grad
>>> out.shape, h_n.shape, lstm.weight_hh_l1.grad.shape
(torch.Size([7, 2, 5]), torch.Size([2, 2, 5]), torch.Size([20, 5]))
>>> model = torch.nn.Sequential(torch.nn.GRU(3, 4))
>>> type(fastrnn.torch.convert(model)[0])
<class 'fastrnn.torch.GRU'>
"""
from __future__ import annotations

import copy
import ctypes
import math
import os
from collections import OrderedDict, namedtuple

import torch
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

from . import _C
from .core import cells as _cells
from .core import functional as F
from .core.stream import Stream, check_streamable

__all__ = ["LSTM", "GRU", "RNN", "LayerNormLSTM", "LayerNormGRU", "LiGRU", "SLiGRU", "convert", "revert", "quantize_dynamic"]

# torch's RNNBase.mode -> fastrnn cell name.
_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

# Everything about one call that is not a tensor.
_Spec = namedtuple("_Spec", "cell names num_layers bidirectional bias batch_first dropout reset_after lengths where "
                           "bptt_clip module recorders variants noise compute_dtype")
# The fastrnn-only regularizer keywords of the modules, and their defaults (off).
_REGULARIZERS = {"recurrent_dropout": 0.0, "zoneout_h": 0.0, "zoneout_c": 0.0, "weight_drop": 0.0}


def _host_view(t):
    """NumPy view of a CPU tensor; for a tensor on a GPU or in bf16 (NumPy has no bf16), a read-only
    float32 host copy (writes would be lost)."""
    if t.device.type == "cpu" and t.dtype != torch.bfloat16:
        return t.detach().numpy()
    a = t.detach().cpu().float().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()
    a.flags.writeable = False
    return a


def _numpy(t):
    return None if t is None else t.detach().numpy()


_TORCH_OMP = None  # (GOMP_parallel, omp_get_thread_num, omp_get_num_threads) addresses, or ()


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(address):
    """Real path of the loaded library that holds `address` (dladdr), or None."""
    info = _DlInfo()
    for libc in (None, "libdl.so.2"):  # glibc >= 2.34 has dladdr in libc itself
        try:
            dladdr = ctypes.CDLL(libc).dladdr
        except (OSError, AttributeError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        if dladdr(address, ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(info.dli_fname.decode())
        return None
    return None


def _address(lib, name):
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _torch_omp_library():
    """Path of the OpenMP runtime torch's CPU operators call, or None.

    Several runtimes may be loaded (torch's libgomp, a conda libgomp, MKL's libiomp5); torch
    calls the one its own library, libtorch_cpu, binds its OpenMP symbols to. The dynamic linker
    resolves them in the global scope first (the program, what it was started with, e.g.
    LD_PRELOAD, and libraries loaded with RTLD_GLOBAL, as torch loads its libgomp), then among
    libtorch_cpu's own dependencies: the same two lookups, in that order, find that library."""
    try:
        with open("/proc/self/maps") as f:
            torch_cpu = next((line.split()[-1] for line in f
                              if os.path.basename(line.split()[-1]).startswith("libtorch_cpu.")), None)
    except OSError:
        return None
    if torch_cpu is None:
        return None
    try:
        scopes = [ctypes.CDLL(None), ctypes.CDLL(torch_cpu, mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LAZY)]
    except OSError:
        return None
    for scope in scopes:
        address = _address(scope, "omp_get_max_threads")
        if address:
            return _library_of(address)
    return None


def _torch_omp():
    """Entry points of the OpenMP runtime torch's CPU operators run on, or () when there is none.

    fastrnn's kernels run their parallel regions on it (see ``_on_torch_threads``)."""
    global _TORCH_OMP
    if _TORCH_OMP is None:
        _TORCH_OMP = ()
        path = _torch_omp_library() if "OpenMP" in torch.__config__.parallel_info() else None
        if path is None:
            return _TORCH_OMP
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LAZY)
        except OSError:
            return _TORCH_OMP
        entry = tuple(_address(lib, name) for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"))
        # All three from that runtime itself (dlsym would also search the libraries it depends on).
        if all(entry) and all(_library_of(a) == path for a in entry):
            _TORCH_OMP = entry
    return _TORCH_OMP


def _on_torch_threads(fn, *args, **kwargs):
    """Call a fastrnn kernel with its parallel regions on torch's OpenMP threads.

    After each operator torch's OpenMP workers keep spinning for a few milliseconds; a second
    thread pool (fastrnn's own) then fights them for the cores: measured on 2 cores, a 2-thread
    LSTM training step at (T, N, H) = (100, 16, 256) took 44 ms instead of 34. On torch's threads
    there is one pool and no contention. Only with more than one thread on both sides."""
    omp = _torch_omp() if torch.get_num_threads() > 1 and _C.get_num_threads() > 1 else ()
    if not omp:
        return fn(*args, **kwargs)
    was_on = _C._use_foreign_omp(True, *omp)
    try:
        return fn(*args, **kwargs)
    finally:
        if not was_on:
            _C._use_foreign_omp(False)


def _check_reduced_call(where, compute_dtype, training, inputs, params):
    """An int8 module's forward is inference on the CPU (eval mode, no gradients); a bf16 one runs
    on the CPU, in inference or training."""
    if compute_dtype not in ("int8", "bfloat16"):
        raise ValueError(f"{where}: compute_dtype={compute_dtype!r}; expected None, 'int8' or 'bfloat16'")
    devices = sorted({str(t.device) for t in (*inputs, *params) if t.device.type != "cpu"})
    if devices:
        raise RuntimeError(f"{where}: compute_dtype={compute_dtype!r} runs on the CPU, got tensors on {devices} "
                           "(move the module and its inputs with .cpu(), or set compute_dtype = None)")
    if compute_dtype == "bfloat16":
        return
    if training:
        raise RuntimeError(f"{where}: this module is quantized to int8 (fastrnn.torch.quantize_dynamic), which is "
                           "for inference: call .eval() first. int8 has no gradients: train the float32 module, "
                           "then quantize it again")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *params)):
        raise RuntimeError(f"{where}: {compute_dtype} inference has no gradients, but the input, the state or a "
                           "parameter requires grad (run under torch.no_grad(), or detach them / "
                           "requires_grad_(False))")


def _check_stream_dtype(where, params):
    if params and params[0].dtype == torch.bfloat16:
        raise TypeError(f"{where}: streams keep float32 or float64 parameters, got torch.bfloat16 (keep float32 "
                        "parameters and set compute_dtype = 'bfloat16' to step in bf16)")


def _precision(where, compute_dtype, weights, inputs, autocast_bf16=True):
    """How a call computes, as torch would have it. Returns ``(compute_dtype, weights, inputs,
    out_dtype)``: bf16 parameters (``module.to(torch.bfloat16)``) compute in bf16 on float32 copies
    of the parameters (exact: every bf16 value is a float32), the inputs must be bf16 too, and the
    outputs are bf16, the gradients reaching the bf16 parameters through the copies; under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` float32 parameters compute in bf16 and the
    outputs are bf16 (autocast's rule for recurrent layers), inputs of any float dtype, unless
    `autocast_bf16` is False (a regularizer bf16 does not take: float32, as autocast leaves the ops
    it has no lower-precision kernel for); int8 modules under autocast take inputs of any float
    dtype too (their outputs stay float32)."""
    dtype = weights[0].dtype
    if dtype == torch.bfloat16:
        for i, t in enumerate(inputs):
            if t.dtype != dtype:
                raise TypeError(f"{where}: {('input', 'h_0', 'c_0')[i]} has dtype {t.dtype}, expected "
                                f"{dtype} like the parameters")
        if compute_dtype == "int8":
            raise TypeError(f"{where}: compute_dtype='int8' quantizes float32 parameters, got {dtype}")
        return "bfloat16", [w.float() for w in weights], [t.float() for t in inputs], dtype
    if (dtype == torch.float32 and all(t.device.type == "cpu" for t in (*weights, *inputs))
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        inputs = [t.float() for t in inputs]
        if compute_dtype in (None, "bfloat16") and (autocast_bf16 or compute_dtype == "bfloat16"):
            return "bfloat16", weights, inputs, torch.bfloat16
    return compute_dtype, weights, inputs, None


def _run(spec, x, h0, c0, masks, weights, training, prepared=None, compute_dtype=None):
    """The fastrnn functional forward on NumPy views of the tensors: (out, h_n, c_n, ctx).
    `prepared`: a plan kept on the module (int8 and bf16 inference convert its weights once)."""
    hx = None if h0 is None else ((_numpy(h0), _numpy(c0)) if spec.cell == "lstm" else _numpy(h0))
    return _on_torch_threads(F._forward, spec.cell, _numpy(x), dict(zip(spec.names, map(_numpy, weights))), hx, spec.lengths,
                      num_layers=spec.num_layers, bidirectional=spec.bidirectional, bias=spec.bias,
                      batch_first=spec.batch_first, dropout=spec.dropout if masks is not None else 0.0,
                      training=training, rng=None, reset_after=spec.reset_after, where=spec.where,
                      masks=_numpy(masks), noise=spec.noise if training else None,
                      sample_noise=spec.module.training, weights=prepared, compute_dtype=compute_dtype,
                      **spec.variants)


class _RNNFunction(torch.autograd.Function):
    """A whole RNN/LSTM/GRU stack as one autograd node: the C++ forward with cache, then the C++ BPTT.

    Inputs ``(spec, x, h0, c0, masks, *weights)``; the weights are inputs so that their gradients
    reach the parameters (and DDP's gradient hooks). Outputs ``(out, h_n[, c_n])``.
    """

    @staticmethod
    def forward(ctx, spec, x, h0, c0, masks, *weights):
        out, h_n, c_n, fctx = _run(spec, x, h0, c0, masks, weights, training=True, compute_dtype=spec.compute_dtype)
        if spec.recorders:  # fastrnn.diagnostics.record: gate statistics from the cache
            F.notify_forward(spec.recorders, spec.module, fctx)
        # What BPTT reads is saved through torch, so retain_graph, the check against in-place
        # changes of x or the weights, and freeing the cache after backward behave as for torch ops.
        ctx.save_for_backward(x, *weights, torch.from_numpy(fctx.x), torch.from_numpy(fctx.cache), masks)
        fctx.x = fctx.cache = fctx.masks = None
        ctx.fctx = fctx
        ctx.spec = spec
        ctx.set_materialize_grads(False)  # outputs without a gradient reach the core as None
        outs = (torch.from_numpy(out), torch.from_numpy(h_n))
        return outs if c_n is None else outs + (torch.from_numpy(c_n),)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h_n, grad_c_n=None):
        *_, x, cache, masks = ctx.saved_tensors
        fctx = ctx.fctx
        fctx.x, fctx.cache, fctx.masks = x.numpy(), cache.numpy(), _numpy(masks)
        try:  # retain: autograd may run this node again (retain_graph=True, gradcheck)
            grad_x, grad_h0, grad_c0, grads = _on_torch_threads(F.backward, fctx, _numpy(grad_out), _numpy(grad_h_n),
                                                         _numpy(grad_c_n), retain=True,
                                                         bptt_clip=ctx.spec.bptt_clip,
                                                         record=bool(ctx.spec.recorders))
            for r in ctx.spec.recorders:
                r._on_backward(ctx.spec.module, fctx)
        finally:
            fctx.x = fctx.cache = fctx.masks = None
        need = ctx.needs_input_grad

        def wrap(a, i):
            return torch.from_numpy(a) if need[i] and a is not None else None
        return (None, wrap(grad_x, 1), wrap(grad_h0, 2), wrap(grad_c0, 3), None,
                *(wrap(grads[name], 5 + i) for i, name in enumerate(ctx.spec.names)))


def _on_gpu(t):
    """Whether a call runs on the CUDA backend (its tensors are on a CUDA device)."""
    return t.device.type == "cuda"


def _packed_layout(seq):
    """For a PackedSequence: the row of the time-major padded ``[T*N]`` grid holding each row of
    ``seq.data``, the lengths in the original batch order, T and N."""
    bs = seq.batch_sizes
    T, N = bs.numel(), int(bs[0])
    order = seq.sorted_indices if seq.sorted_indices is not None else torch.arange(N)
    alive = torch.arange(N) < bs[:, None]  # [T, N]: sorted sequence j still runs at step t
    rows = (torch.arange(T)[:, None] * N + order)[alive]
    lengths = torch.empty(N, dtype=torch.int64)
    lengths[order] = alive.sum(0)
    return rows, lengths.numpy(), T, N


class _DropsKeptPlan:
    """The plan a module keeps for streams and int8/bf16 inference (`_kept_plan`) holds core
    objects that do not pickle: copies and pickles (copy.deepcopy, torch.save) leave it out, and
    it is made again at the next use."""

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_stream_plan", None)
        return state


class _FastRNNBase(_DropsKeptPlan):
    """``forward`` and the fastrnn layer protocol, mixed into the torch.nn classes (listed first).

    Besides torch's attributes: ``bptt_clip`` (None, or clip every gate pre-activation gradient to
    [-c, c] inside BPTT, Graves 2013; set it on the module) and the hook used by
    `fastrnn.diagnostics.record`.
    """

    bptt_clip = None
    _recorders = ()  # fastrnn.diagnostics.record objects attached to this module
    # "int8": dynamic quantization for inference (fastrnn.torch.quantize_dynamic); "bfloat16": bf16
    # products for inference and training, float32 parameters (set the attribute); None: the
    # parameters' dtype, or bf16 under torch.autocast("cpu", dtype=torch.bfloat16)
    compute_dtype = None
    layer_norm = False
    peephole = False
    recurrent_dropout = zoneout_h = zoneout_c = weight_drop = 0.0

    def _set_regularizers(self, where, **rates):
        for name, value in rates.items():
            setattr(self, name, F._check_rate(value, name, where))

    def _regularizer_repr(self):
        return ("".join(f", {k}={getattr(self, k)}" for k in _REGULARIZERS if getattr(self, k))
                + (f", compute_dtype={self.compute_dtype!r}" if self.compute_dtype else ""))

    def _noise(self, T, N):
        """The regularizers' masks of one training forward, from torch's RNG (None: none apply)."""
        L, D, H = self.num_layers, 2 if self.bidirectional else 1, self.hidden_size
        K = self.proj_size or H
        G = _cells.gates(self._cell())
        S, dtype = L * D, self._flat_weights[0].dtype
        dtype = torch.float32 if dtype == torch.bfloat16 else dtype  # bf16 parameters compute on float32 copies
        out = {}
        if self.recurrent_dropout:
            p = self.recurrent_dropout
            out["rec_mask"] = torch.empty((S, N, K), dtype=dtype).bernoulli_(1 - p).div_(1 - p)
        if self.zoneout_h:
            out["zh_mask"] = torch.empty((S, T, N, K), dtype=dtype).bernoulli_(self.zoneout_h)
        if self.zoneout_c:
            out["zc_mask"] = torch.empty((S, T, N, H), dtype=dtype).bernoulli_(self.zoneout_c)
        if self.weight_drop:
            p = self.weight_drop
            out["w_mask"] = torch.empty((S, G * H, K), dtype=dtype).bernoulli_(1 - p).div_(1 - p)
        return {k: v.numpy() for k, v in out.items()} or None

    def _cell(self):
        """The fastrnn cell: "rnn_tanh", "rnn_relu", "lstm" or "gru"."""
        return _CELLS[self.mode]

    @property
    def params(self):
        """name -> NumPy view of each parameter (torch names; writing into a view changes the parameter).

        For a module on a GPU: read-only host copies; with bf16 parameters: read-only float32 copies."""
        return OrderedDict((name, _host_view(getattr(self, name))) for name in self._flat_weights_names)

    @property
    def grads(self):
        """name -> NumPy view of each ``param.grad`` (zero gradients are allocated where ``.grad`` is None).

        Views of the current ``.grad`` tensors: after ``zero_grad()`` (which sets them to None by
        default) read ``.grads`` again.
        """
        out = OrderedDict()
        for name in self._flat_weights_names:
            p = getattr(self, name)
            if p.device.type != "cpu":
                raise RuntimeError(f"fastrnn.torch.{type(self).__name__}.grads: the parameters are on {p.device}; "
                                   "NumPy views exist for CPU tensors only (use each parameter's .grad)")
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out[name] = p.grad.numpy()
        return out

    def stream(self, batch=1):
        """Streaming inference on CPU tensors: a `fastrnn.core.stream.Stream` whose ``step`` takes
        and returns tensors (no autograd: a stream is inference). The module must be in eval mode
        and unidirectional. In-place updates of the parameters (an optimizer step,
        ``load_state_dict``) are used by the next step; replaced parameters are picked up too.

        Examples
        --------
        >>> import torch, fastrnn.torch
        >>> s = fastrnn.torch.GRU(3, 4).eval().stream(batch=2)
        >>> s.step(torch.zeros(2, 3)).shape
        torch.Size([2, 4])
        """
        where = f"fastrnn.torch.{type(self).__name__}.stream"
        self._update_flat_weights()
        devices = {str(w.device) for w in self._flat_weights if w.device.type != "cpu"}
        if devices:
            raise RuntimeError(f"{where}: streams run on CPU tensors; the parameters are on {sorted(devices)} "
                               "(move the module with .cpu(), or use torch.nn.LSTMCell/GRUCell on the GPU)")
        self._check_supported(where, self._flat_weights)
        _check_stream_dtype(where, self._flat_weights)
        return _TorchStream(self, batch, where=where, lstm=self.mode == "LSTM", weights=self._stream_weights,
                            zoneout_h=self.zoneout_h, zoneout_c=self.zoneout_c)

    def _stream_weights(self, where):
        """The core's plan on NumPy views of the parameters, made again when one was replaced
        (streams, and int8/bf16 inference, whose converted weights it keeps)."""
        tensors = [getattr(self, name) for name in self._flat_weights_names]
        return _kept_plan(self, where, tensors, lambda: F.prepare(
            where, self._cell(), dict(zip(self._flat_weights_names, (t.detach().numpy() for t in tensors))),
            self.num_layers, self.bidirectional, self.bias, reset_after=getattr(self, "reset_after", True),
            proj_size=self.proj_size, peephole=self.peephole, layer_norm=self.layer_norm,
            zoneout_c=bool(self.zoneout_c)))

    def _check_supported(self, where, tensors):
        for device in {t.device for t in tensors if t.device.type != "cpu"}:
            from .core import cuda
            why = cuda.reason() if device.type == "cuda" else f"fastrnn has no backend for '{device.type}' tensors"
            if why is not None:
                raise RuntimeError(f"{where}: got a tensor on device '{device}' but the fastrnn CUDA backend is "
                                   f"not built/available ({why}): fastrnn.torch runs on CPU tensors, and on CUDA "
                                   "tensors with the CUDA backend (move the module and its inputs with .cpu(), or "
                                   "use torch.nn on the GPU)")
        devices = sorted({str(t.device) for t in tensors})
        if len(devices) > 1:
            raise RuntimeError(f"{where}: the input, states and parameters are on different devices {devices}; "
                               "move them to one device")
        dtype = self._flat_weights[0].dtype
        if dtype not in _DTYPES:
            raise TypeError(f"{where}: the parameters have dtype {dtype}, expected torch.float32, torch.float64 or "
                            "torch.bfloat16 (convert the module with .float(), .double() or .bfloat16())")

    def forward(self, input, hx=None):
        """Torch's ``forward(input, hx=None)``: the same arguments, checks and outputs as the torch.nn twin.

        ``input`` is ``[T, N, C]`` (``[N, T, C]`` with ``batch_first``), unbatched ``[T, C]``, or a
        ``PackedSequence`` (then the output is one too, with the same batch sizes and indices).
        Returns ``(output, h_n)``, LSTM ``(output, (h_n, c_n))``; states ``[L*D, N, H]`` in the
        original batch order.
        """
        self._update_flat_weights()
        name = type(self).__name__
        where = f"fastrnn.torch.{name}.forward"
        lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"{where}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if lstm and hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"{where}: hx must be a tuple (h_0, c_0) for LSTM, got {type(hx).__name__}")
        states = [] if hx is None else (list(hx) if lstm else [hx])
        if not all(isinstance(s, torch.Tensor) for s in states):
            raise TypeError(f"{where}: hx must be {'a tuple of two Tensors' if lstm else 'a Tensor'} or None, "
                            f"got {type(hx).__name__}" + (f" of {[type(s).__name__ for s in hx]}" if lstm else ""))
        weights = self._flat_weights
        self._check_supported(where, [data, *states, *weights])

        # torch's checks and messages (shapes of input and hx), on the layout torch checks them in.
        unbatched = False
        batch_sizes = input.batch_sizes if packed else None
        if not packed:
            if data.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {data.dim()}D instead")
            unbatched = data.dim() == 2
            want = 2 if unbatched else 3
            if any(s.dim() != want for s in states):
                got = ", ".join(f"{s.dim()}-D" for s in states)
                raise RuntimeError(f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, hx should also "
                                   f"be {want}-D but got {got}")
            if unbatched:
                data = data.unsqueeze(0 if self.batch_first else 1)
                states = [s.unsqueeze(1) for s in states]
        if states:
            self.check_forward_args(data, tuple(states) if lstm else states[0], batch_sizes)
        else:
            self.check_input(data, batch_sizes)

        compute, weights, (data, *states), out_dtype = _precision(where, self.compute_dtype, weights, [data, *states],
                                                                  autocast_bf16=not self.weight_drop)
        if compute is not None:
            _check_reduced_call(where, compute, self.training, (data, *states), weights)
        for which, t in zip(("input", "h_0", "c_0"), [data, *states]):
            if t.dtype != weights[0].dtype:  # the input's dtype is checked by torch too
                raise TypeError(f"{where}: {which} has dtype {t.dtype}, expected {weights[0].dtype} like the "
                                "parameters (or run under torch.autocast('cpu', dtype=torch.bfloat16))")

        if packed:  # to the padded time-major layout of the core, in the original batch order
            rows, lengths, T, N = _packed_layout(input)
            rows = rows.to(data.device)
            x = data.new_zeros(T * N, data.shape[-1]).index_copy(0, rows, data).view(T, N, -1)
        else:
            x, lengths = data, None
            T, N = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]

        masks = None
        L, D, K = self.num_layers, 2 if self.bidirectional else 1, self.proj_size or self.hidden_size
        if self.training and self.dropout > 0 and L > 1:
            p = self.dropout
            if p >= 1:
                raise ValueError(f"{where}: dropout={p} is not supported in training mode (fastrnn needs dropout < 1)")
            # Masks from torch's RNG, so torch.manual_seed makes training runs reproducible.
            masks = torch.empty((L - 1, T, N, D * K), dtype=weights[0].dtype).bernoulli_(1 - p).div_(1 - p)
        noise = self._noise(T, N) if self.training else None
        variants = dict(proj_size=self.proj_size, layer_norm=self.layer_norm, peephole=self.peephole,
                        **{k: getattr(self, k) for k in _REGULARIZERS if getattr(self, k)})
        spec = _Spec(self._cell(), self._flat_weights_names, L, self.bidirectional, self.bias,
                     self.batch_first and not packed, self.dropout, getattr(self, "reset_after", True), lengths, where,
                     self.bptt_clip, self, tuple(r for r in self._recorders if r.active), variants, noise, compute)
        h0, c0 = (states + [None, None])[:2]
        regularized = masks is not None or noise is not None
        if _on_gpu(x):  # the CUDA backend, zero-copy on torch's current stream
            from ._torch_cuda import run
            outs = run(spec, x, h0, c0, masks, weights)
        elif torch.is_grad_enabled() and any(t.requires_grad for t in (x, *states, *weights)):
            outs = _RNNFunction.apply(spec, x, h0, c0, masks, *weights)  # float32 or bf16 (int8 was refused)
        elif compute is not None and not regularized and weights is self._flat_weights:
            # inference on the plan kept on the module: the weights are converted once
            out, h_n, c_n, _ = _run(spec, x, h0, c0, None, weights, training=False,
                                    prepared=self._stream_weights(where), compute_dtype=compute)
            outs = tuple(torch.from_numpy(a) for a in (out, h_n, c_n) if a is not None)
        else:  # nothing to differentiate: no cache kept (one is made and dropped only to apply the masks)
            out, h_n, c_n, _ = _run(spec, x, h0, c0, masks, weights, training=regularized, compute_dtype=compute)
            outs = tuple(torch.from_numpy(a) for a in (out, h_n, c_n) if a is not None)
        if out_dtype is not None:
            outs = tuple(t.to(out_dtype) for t in outs)

        output, hidden = outs[0], outs[1:]
        if packed:
            output = PackedSequence(output.reshape(T * N, -1).index_select(0, rows), batch_sizes,
                                    input.sorted_indices, input.unsorted_indices)
        elif unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(s.squeeze(1) for s in hidden)
        return output, (hidden if lstm else hidden[0])


def _kept_plan(module, where, tensors, make):
    """A stream's (or int8/bf16 inference's) plan on NumPy views of `tensors`, kept on `module`
    while the same tensors with the same storage and version are there; `make()` makes a new one.
    The version (torch counts in-place writes: an optimizer step, load_state_dict) makes a new plan
    after a write, which int8/bf16 streams need (they convert the weights once); float32 streams
    would have seen the write through the views anyway. A plan on copies (non-contiguous
    parameters) is not kept: the copies would miss later writes."""
    key = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
    kept = module.__dict__.get("_stream_plan")
    if kept is not None and kept[0] == key:
        return kept[1]
    if any(t.device.type != "cpu" for t in tensors):
        raise RuntimeError(f"{where}: the parameters are not on the CPU; streams run on CPU tensors")
    w = make()
    if not w.copied:
        module.__dict__["_stream_plan"] = (key, w)
    return w


class _TorchStream(Stream):
    """A stream of a fastrnn.torch module: CPU tensors in and out, NumPy views in between."""

    def _tensor(self, t, name):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{self._where}.step: {name} must be a Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise RuntimeError(f"{self._where}.step: {name} is on {t.device}; streams run on CPU tensors")
        return t.detach().numpy()

    def _inputs(self, x, active, out):
        self._out_tensor = out
        return (self._tensor(x, "x"), None if active is None else self._tensor(active, "active"),
                None if out is None else self._tensor(out, "out"))

    def _output(self, y):
        out, self._out_tensor = self._out_tensor, None
        return out if out is not None else torch.from_numpy(y)

    def _state_in(self, value):
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value

    def _state_out(self, a):
        return torch.from_numpy(a)


class _LiGRUStream:
    """A stream of a fastrnn.torch Li-GRU / SLi-GRU stack: one core stream per layer (SpeechBrain's
    layers are separate modules), a frame through all of them per step."""

    def __init__(self, module, batch, where):
        self._module, self._where = module, where
        self._layers = [_TorchStream(layer, batch, where=where, lstm=False, weights=layer._stream_weights)
                        for layer in module.rnn]
        self.batch = batch

    def step(self, x, active=None, out=None):
        if self._module.training:
            raise RuntimeError(f"{self._where}.step: the module is in training mode; call module.eval() to stream")
        chunk = isinstance(x, torch.Tensor) and x.dim() == 3
        y = x.transpose(0, 1).contiguous() if chunk else x  # batch-first -> the streams' time-major
        for s in self._layers:
            y = s.step(y, active=active)
        y = y.transpose(0, 1) if chunk else y
        if out is not None:
            out.copy_(y)
            return out
        return y

    __call__ = step

    def reset(self, slots=None, h=None):
        """Zero (or set, ``h`` ``[L, len(slots), H]``) the state of ``slots`` in every layer."""
        for i, s in enumerate(self._layers):
            s.reset(slots, h=None if h is None else h[i:i + 1])

    @property
    def state(self):
        return torch.cat([s.state for s in self._layers])

    @state.setter
    def state(self, value):
        self.reset(None, h=value)


class _VariantParams:
    """Registers the variants' extra parameters (peepholes, LayerNorm gains) on a
    torch.nn.LSTM/GRU, after torch's own and in ``_flat_weights_names``; initializes them like
    `fastrnn.LSTM`: U(-1/sqrt(H), 1/sqrt(H)) as torch does, LayerNorm gains 1 and biases 0."""

    def _add_variant_params(self, **variant):
        H, D = self.hidden_size, 2 if self.bidirectional else 1
        ref = self._flat_weights[0]
        stdv = 1.0 / math.sqrt(H)
        names = []
        for name, shape in F.param_shapes(self._cell(), self.input_size, H, self.num_layers, D == 2, self.bias,
                                          proj_size=self.proj_size, **variant):
            if name not in self._flat_weights_names:
                p = torch.nn.Parameter(torch.empty(shape, dtype=ref.dtype, device=ref.device))
                with torch.no_grad():
                    self._init_param(name, p, stdv)
                setattr(self, name, p)
                names.append(name)
        self._flat_weights_names.extend(names)
        self._all_weights.append(names)
        self._init_flat_weights()

    @staticmethod
    def _init_param(name, p, stdv):
        if name.startswith("ln_"):
            p.fill_(0.0 if name.startswith("ln_c_bias") else 1.0)
        else:
            p.uniform_(-stdv, stdv)

    def reset_parameters(self):
        """torch's U(-1/sqrt(H), 1/sqrt(H)) (in registration order, like torch), LayerNorm gains 1
        and LN(c) biases 0."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, p in self.named_parameters():
                self._init_param(name, p, stdv)


class LSTM(_FastRNNBase, _VariantParams, torch.nn.LSTM):
    """``torch.nn.LSTM`` computed by fastrnn's fused kernels (gates i, f, g, o).

    ``i, f, o = σ(W_i x + b_i + U_i h + c_i)``, ``g = tanh(...)``, ``c' = f⊙c + i⊙g``,
    ``h' = o⊙tanh(c')`` (Hochreiter & Schmidhuber 1997; PyTorch's weight layout).
    Constructor, parameters and outputs are ``torch.nn.LSTM``'s, ``proj_size > 0`` (LSTMP,
    ``h' = W_hr (o⊙tanh(c'))``, Sak et al. 2014) included. Besides torch's API: ``.params`` /
    ``.grads`` (NumPy views, torch names), ``_cell()`` for fastrnn's gradient tools, and the
    fastrnn-only keywords ``peephole=True`` (Gers & Schmidhuber 2000; adds parameters
    ``weight_peephole_l{k}`` ``[3, H]``), ``recurrent_dropout`` (Gal & Ghahramani 2016), ``zoneout_h``,
    ``zoneout_c`` (Krueger et al. 2017) and ``weight_drop`` (DropConnect on W_hh; Wan et al.
    2013), whose masks come from torch's RNG in training mode (see `fastrnn.LSTM`).

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> ref = torch.nn.LSTM(3, 4, batch_first=True)
    >>> lstm = fastrnn.torch.LSTM(3, 4, batch_first=True)
    >>> _ = lstm.load_state_dict(ref.state_dict())
    >>> x = torch.randn(2, 6, 3)
    >>> torch.allclose(lstm(x)[0], ref(x)[0], atol=1e-6)
    True
    >>> lstmp = fastrnn.torch.LSTM(3, 4, batch_first=True, proj_size=2)
    >>> out, (h_n, c_n) = lstmp(x)
    >>> out.shape, h_n.shape, c_n.shape, lstmp.weight_hr_l0.shape
    (torch.Size([2, 6, 2]), torch.Size([1, 2, 2]), torch.Size([1, 2, 4]), torch.Size([2, 4]))
    >>> fastrnn.torch.LSTM(3, 4, zoneout_h=0.1, weight_drop=0.2)
    LSTM(3, 4, zoneout_h=0.1, weight_drop=0.2)
    """

    def __init__(self, *args, peephole=False, recurrent_dropout=0.0, zoneout_h=0.0, zoneout_c=0.0, weight_drop=0.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._set_regularizers("fastrnn.torch.LSTM", recurrent_dropout=recurrent_dropout, zoneout_h=zoneout_h,
                               zoneout_c=zoneout_c, weight_drop=weight_drop)
        self.peephole = bool(peephole)
        if self.peephole:
            self._add_variant_params(peephole=True)

    def extra_repr(self):
        return super().extra_repr() + (", peephole=True" if self.peephole else "") + self._regularizer_repr()


class GRU(_FastRNNBase, torch.nn.GRU):
    """``torch.nn.GRU`` computed by fastrnn's fused kernels (gates r, z, n).

    ``r, z = σ(W x + b + U h + c)``, ``n = tanh(W_n x + b_n + r⊙(U_n h + c_n))``,
    ``h' = (1−z)⊙n + z⊙h`` (Cho et al. 2014; PyTorch/cuDNN variant). The fastrnn-only keyword
    ``reset_after=False`` selects ``n = tanh(W_n x + b_n + U_n (r⊙h) + c_n)`` (Keras v1 / ONNX
    default; same parameters, but no ``torch.nn.GRU`` equivalent). Regularizer keywords
    ``recurrent_dropout``, ``zoneout_h``, ``weight_drop``: as for `LSTM`.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> gru = fastrnn.torch.GRU(3, 4, num_layers=2, bidirectional=True)
    >>> out, h_n = gru(torch.randn(5, 3))          # unbatched [T, C]
    >>> out.shape, h_n.shape
    (torch.Size([5, 8]), torch.Size([4, 4]))
    >>> fastrnn.torch.GRU(3, 4, reset_after=False)
    GRU(3, 4, reset_after=False)
    """

    def __init__(self, *args, reset_after=True, recurrent_dropout=0.0, zoneout_h=0.0, weight_drop=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset_after = bool(reset_after)
        self._set_regularizers("fastrnn.torch.GRU", recurrent_dropout=recurrent_dropout, zoneout_h=zoneout_h,
                               weight_drop=weight_drop)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False") + self._regularizer_repr()


class RNN(_FastRNNBase, torch.nn.RNN):
    """``torch.nn.RNN`` (Elman) computed by fastrnn's fused kernels.

    ``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` with act = tanh or relu (``nonlinearity=``).
    Regularizer keywords ``recurrent_dropout`` and ``weight_drop``: as for `LSTM`.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> rnn = fastrnn.torch.RNN(3, 4, nonlinearity="relu")
    >>> out, h_n = rnn(torch.randn(5, 2, 3))
    >>> rnn._cell(), out.shape
    ('rnn_relu', torch.Size([5, 2, 4]))
    """

    def __init__(self, *args, recurrent_dropout=0.0, weight_drop=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_regularizers("fastrnn.torch.RNN", recurrent_dropout=recurrent_dropout, weight_drop=weight_drop)

    def extra_repr(self):
        return super().extra_repr() + self._regularizer_repr()


class LayerNormLSTM(LSTM):
    """LayerNorm LSTM (Ba et al. 2016, the Haste formulation) as a ``torch.nn.LSTM`` with LN gains.

    ``a = LN_γih(W_ih x) + LN_γhh(W_hh h) + b_ih + b_hh`` (gates i, f, g, o), ``c' = f⊙c + i⊙g``,
    ``h' = o⊙tanh(LN_γc,βc(c'))``, ``LN(v) = γ⊙(v - mean v)/sqrt(var v + 1e-5) (+ β)`` per row
    (see `fastrnn.LayerNormLSTM`). torch.nn.LSTM's constructor (``proj_size`` must be 0) and
    parameters plus ``ln_ih_weight_l{k}``, ``ln_hh_weight_l{k}`` ``[4H]`` and ``ln_c_weight_l{k}``,
    ``ln_c_bias_l{k}`` ``[H]``; the regularizer keywords of `LSTM`. `revert` leaves it alone (torch
    has no equivalent).

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> ln = fastrnn.torch.LayerNormLSTM(3, 4, num_layers=2)
    >>> out, (h_n, c_n) = ln(torch.randn(6, 2, 3))
    >>> out.sum().backward()
    >>> out.shape, ln.ln_c_weight_l1.grad.shape
    (torch.Size([6, 2, 4]), torch.Size([4]))
    """

    layer_norm = True

    def __init__(self, *args, **kwargs):
        if kwargs.get("proj_size") or kwargs.get("peephole"):
            raise ValueError("fastrnn.torch.LayerNormLSTM: proj_size and peephole are not supported with layer "
                             "normalization")
        super().__init__(*args, **kwargs)
        self._add_variant_params(layer_norm=True)


class LayerNormGRU(_VariantParams, GRU):
    """LayerNorm GRU (Ba et al. 2016, the Haste formulation) as a ``torch.nn.GRU`` with LN gains.

    ``vx = LN_γih(W_ih x) + b_ih``, ``vh = LN_γhh(W_hh h) + b_hh``, ``r = σ(vx_r + vh_r)``,
    ``z = σ(vx_z + vh_z)``, ``n = tanh(vx_n + r⊙vh_n)``, ``h' = (1-z)⊙n + z⊙h`` (see
    `fastrnn.LayerNormGRU`); torch.nn.GRU's constructor and parameters plus ``ln_ih_weight_l{k}``,
    ``ln_hh_weight_l{k}`` ``[3H]``; the regularizer keywords of `GRU`.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> ln = fastrnn.torch.LayerNormGRU(3, 4, batch_first=True)
    >>> out, h_n = ln(torch.randn(2, 6, 3))
    >>> out.shape, sorted(n for n, _ in ln.named_parameters() if n.startswith("ln_"))
    (torch.Size([2, 6, 4]), ['ln_hh_weight_l0', 'ln_ih_weight_l0'])
    """

    def __init__(self, *args, **kwargs):
        if not kwargs.get("reset_after", True):
            raise ValueError("fastrnn.torch.LayerNormGRU: reset_after=False is not supported with layer normalization")
        super().__init__(*args, **kwargs)
        self._add_variant_params(layer_norm=True)

    layer_norm = True


_TO_FAST = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}
_TO_TORCH = {v: k for k, v in _TO_FAST.items()}


# --------------------------------------------------------------------------- Li-GRU, SLi-GRU

_LIGRU_ACTS = {"tanh": torch.nn.Tanh, "sin": lambda: torch.sin, "leaky_relu": torch.nn.LeakyReLU,
               "relu": torch.nn.ReLU}


class _LiGRUFunction(torch.autograd.Function):
    """One Li-GRU / SLi-GRU layer as one autograd node: the fused C++ forward (batch norm of the
    hoisted input product included) and one BPTT call. Inputs ``(spec, x [T, N, C], h0 [N, H],
    cand_mask [N, H] or None, *params)``, params in the plan's order."""

    @staticmethod
    def forward(ctx, spec, x, h0, cand_mask, *params):
        kind, names, buffers, options, module_training, compute_dtype = spec
        noise = None if cand_mask is None else {"cand_mask": _numpy(cand_mask)[None]}
        # In eval mode a differentiated call keeps SpeechBrain's inference math: the batch norm's
        # running statistics, no dropout (sample_noise=False).
        out, _, _, fctx = _on_torch_threads(
            F._forward, kind, _numpy(x), dict(zip(names, map(_numpy, params))), _numpy(h0)[None], None,
            num_layers=1, bidirectional=False, batch_first=False, dropout=0.0, training=True, rng=None,
            reset_after=True, where=f"fastrnn.torch.{'SLiGRU' if kind == 'sligru' else 'LiGRU'}.forward",
            noise=noise, sample_noise=module_training, buffers=buffers, compute_dtype=compute_dtype, **options)
        ctx.save_for_backward(x, *params, torch.from_numpy(fctx.x), torch.from_numpy(fctx.cache))
        fctx.x = fctx.cache = None
        ctx.fctx, ctx.names = fctx, names
        ctx.set_materialize_grads(False)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        *_, x, cache = ctx.saved_tensors
        fctx = ctx.fctx
        fctx.x, fctx.cache = x.numpy(), cache.numpy()
        try:  # retain: autograd may run this node again (retain_graph=True, gradcheck)
            grad_x, grad_h0, _, grads = _on_torch_threads(F.backward, fctx, _numpy(grad_out), retain=True)
        finally:
            fctx.x = fctx.cache = None
        need = ctx.needs_input_grad
        wrap = lambda a, i: torch.from_numpy(a) if need[i] else None  # noqa: E731
        return (None, wrap(grad_x, 1), wrap(grad_h0[0], 2), None,
                *(wrap(grads[n], 4 + i) for i, n in enumerate(ctx.names)))


class _LiGRULayer(_DropsKeptPlan, torch.nn.Module):
    """One layer with the structure, names and state of SpeechBrain's ``LiGRU_Layer`` /
    ``SLiGRU_Layer`` (``w``, ``u``, ``norm``, ``layer_norm``, ``h_init``, ``drop_masks``), run by
    fastrnn's kernel."""

    compute_dtype = None  # "int8" (quantize_dynamic, inference) or "bfloat16" (inference and training)

    def __init__(self, input_size, hidden_size, num_layers, batch_size, dropout=0.0, nonlinearity="relu",
                 normalization="batchnorm", bias=True, bidirectional=False, stabilised=False,
                 recurrent_elementwise_affine=False):
        super().__init__()
        self.hidden_size, self.input_size = int(hidden_size), int(input_size)
        self.batch_size, self.bidirectional, self.dropout, self.bias = batch_size, bidirectional, dropout, bias
        self.nonlinearity, self.stabilised = nonlinearity, stabilised
        H2 = 2 * self.hidden_size
        self.w = torch.nn.Linear(self.input_size, H2, bias=False)
        self.u = torch.nn.Linear(self.hidden_size, H2, bias=False)
        if stabilised:
            self.layer_norm = torch.nn.LayerNorm(H2, elementwise_affine=recurrent_elementwise_affine)
        if self.bidirectional:
            self.batch_size = self.batch_size * 2
        # SpeechBrain's rule: batchnorm, else a LayerNorm (also for any other string).
        self.norm = torch.nn.BatchNorm1d(H2, momentum=0.05) if normalization == "batchnorm" else \
            torch.nn.LayerNorm(H2)
        self.normalize = True
        if not self.bias:  # SpeechBrain freezes the normalization's shift at zero
            self.norm.bias.data.fill_(0)
            self.norm.bias.requires_grad = False
        self.register_buffer("h_init", torch.zeros(1, self.hidden_size))
        self.drop = torch.nn.Dropout(p=self.dropout, inplace=False)
        self.N_drop_masks = 16000
        self.drop_mask_cnt = 0
        # SpeechBrain saves LiGRU's bank with the state, not SLiGRU's.
        self.register_buffer("drop_masks", self.drop(torch.ones(self.N_drop_masks, self.hidden_size)).data,
                             persistent=not stabilised)
        self.register_buffer("drop_mask_te", torch.tensor([1.0]).float())
        self.act = _LIGRU_ACTS.get(nonlinearity, torch.nn.ReLU)()

    # SpeechBrain's recurrent-dropout masks: a bank drawn ahead, consumed batch by batch.
    def _sample_drop_mask(self, w):
        if not self.training:
            return None
        if self.drop_mask_cnt + self.batch_size > self.N_drop_masks:
            self.drop_mask_cnt = 0
            self.drop_masks = self.drop(torch.ones(self.N_drop_masks, self.hidden_size, device=w.device)).data
        mask = self.drop_masks[self.drop_mask_cnt:self.drop_mask_cnt + self.batch_size]
        self.drop_mask_cnt = self.drop_mask_cnt + self.batch_size
        return mask

    def _change_batch_size(self, x):
        if self.batch_size != x.shape[0]:
            self.batch_size = x.shape[0]
            if self.training:
                self.drop_masks = self.drop(torch.ones(self.N_drop_masks, self.hidden_size, device=x.device)).data

    def _spec(self):
        """The fastrnn view of this layer: parameter names, buffers and options."""
        batch_norm = isinstance(self.norm, torch.nn.BatchNorm1d)
        names, params = ["weight_ih_l0", "weight_hh_l0", "norm_weight_l0"], [self.w.weight, self.u.weight,
                                                                              self.norm.weight]
        if self.bias:
            names.append("norm_bias_l0")
            params.append(self.norm.bias)
        affine = self.stabilised and self.layer_norm.elementwise_affine
        if affine:
            names += ["ln_hh_weight_l0", "ln_hh_bias_l0"]
            params += [self.layer_norm.weight, self.layer_norm.bias]
        buffers = None
        options = dict(nonlinearity=self.nonlinearity, normalization="batchnorm" if batch_norm else "layernorm",
                       bias=self.bias)
        if batch_norm:  # read and updated in place (float32 copies of bf16 ones, written back by forward)
            wide = lambda t: t.float() if t.dtype == torch.bfloat16 else t  # noqa: E731
            buffers = {"norm_running_mean_l0": _numpy(wide(self.norm.running_mean)),
                       "norm_running_var_l0": _numpy(wide(self.norm.running_var))}
            options["momentum"] = self.norm.momentum
            if self.training and self.norm.num_batches_tracked is not None:
                self.norm.num_batches_tracked.add_(1)
        if self.stabilised:
            options["recurrent_affine"] = affine
        return ("sligru" if self.stabilised else "ligru"), names, params, buffers, options

    def _stream_weights(self, where):
        """The core's plan of this layer on NumPy views of its tensors (made again when one was
        replaced; buffers are read in place)."""
        kind, names, params, buffers, options = self._spec()
        tensors = params + ([self.norm.running_mean, self.norm.running_var] if buffers else [])
        return _kept_plan(self, where, tensors, lambda: F.prepare(
            where, kind, dict(zip(names, (t.detach().numpy() for t in params))), 1, False, self.bias,
            buffers=buffers, **{k: v for k, v in options.items() if k != "bias"}))

    def forward(self, x, hx=None):
        if self.bidirectional:
            x = torch.cat([x, x.flip(1)], dim=0)
        self._change_batch_size(x)
        mask = self._sample_drop_mask(x)
        h0 = hx if hx is not None else self.h_init.broadcast_to(x.shape[0], self.hidden_size)
        where = f"fastrnn.torch.{'SLiGRU' if self.stabilised else 'LiGRU'}.forward"
        kind, names, params, buffers, options = self._spec()
        xt = x.transpose(0, 1).contiguous()  # fastrnn's time-major layout
        h0 = h0.contiguous()
        low_params = params[0].dtype == torch.bfloat16  # module.to(torch.bfloat16)
        compute, params, (xt, h0), out_dtype = _precision(where, self.compute_dtype, params, [xt, h0])
        if compute is not None:
            _check_reduced_call(where, compute, self.training, (xt, h0), params)
        if mask is not None and mask.dtype == torch.bfloat16:  # the bank of a module made bf16
            mask = mask.float()
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, *params)):
            h = _LiGRUFunction.apply((kind, names, buffers, options, self.training, compute), xt, h0, mask, *params)
        elif compute is not None and not self.training and not low_params:  # the plan kept on the layer
            out, _, _, _ = _on_torch_threads(
                F._forward, kind, _numpy(xt), dict(zip(names, map(_numpy, params))), _numpy(h0)[None], None,
                num_layers=1, bidirectional=False, batch_first=False, dropout=0.0, training=False, rng=None,
                reset_after=True, where=where, buffers=buffers, weights=self._stream_weights(where),
                compute_dtype=compute, **options)
            h = torch.from_numpy(out)
        else:
            fn = F.sligru_forward if kind == "sligru" else F.ligru_forward
            noise = None if mask is None else {"cand_mask": _numpy(mask.contiguous())[None]}
            out, _, _ = _on_torch_threads(fn, _numpy(xt), dict(zip(names, map(_numpy, params))), _numpy(h0)[None],
                                          training=self.training, buffers=buffers, noise=noise, compute_dtype=compute,
                                          **options)
            h = torch.from_numpy(out)
        if low_params and buffers:  # the batch-norm statistics the kernel updated, back into the bf16 buffers
            self.norm.running_mean.copy_(torch.from_numpy(buffers["norm_running_mean_l0"]))
            self.norm.running_var.copy_(torch.from_numpy(buffers["norm_running_var_l0"]))
        if out_dtype is not None:
            h = h.to(out_dtype)
        h = h.transpose(0, 1)
        if self.bidirectional:
            h_f, h_b = h.chunk(2, dim=0)
            h = torch.cat([h_f, h_b.flip(1)], dim=2)
        return h


class LiGRU(torch.nn.Module):
    """SpeechBrain's ``speechbrain.nnet.RNN.LiGRU`` (1.1), run by fastrnn's fused kernels: the same
    constructor, ``forward(x, hx=None) -> (output, hh)`` on batch-first ``[N, T, C]`` input (4-D
    input flattened), module structure and ``state_dict`` (so SpeechBrain checkpoints load
    unchanged, and back), initialization (orthogonal ``u`` with ``re_init``), recurrent-dropout
    masks (the same pre-drawn bank, consumed the same way) and bidirectional form (the flipped batch
    through the same weights and the same batch-norm statistics).

    Where SpeechBrain loops over time in Python (autograd per step), this is one C++ forward and
    one BPTT call per layer, with the batch norm of the hoisted input product inside the kernel.
    `convert` swaps SpeechBrain's modules for these. fastrnn's own NumPy layers with fastrnn's
    conventions (time-major, lengths, separate reverse weights): `fastrnn.LiGRU`.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> _ = torch.manual_seed(0)
    >>> net = fastrnn.torch.LiGRU(hidden_size=5, input_shape=(4, 10, 20))
    >>> out, hh = net(torch.rand(4, 10, 20))
    >>> out.shape, hh.shape
    (torch.Size([4, 10, 5]), torch.Size([1, 4, 5]))
    >>> out.sum().backward(); net.rnn[0].u.weight.grad.shape
    torch.Size([10, 5])
    """

    _stabilised = False

    def __init__(self, hidden_size, input_shape, nonlinearity="relu", normalization="batchnorm", num_layers=1,
                 bias=True, dropout=0.0, re_init=True, bidirectional=False, **stabilised):
        super().__init__()
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        self.num_layers = num_layers
        self.bias = bias
        self.dropout = dropout
        self.re_init = re_init
        self.bidirectional = bidirectional
        self.reshape = len(input_shape) > 3
        self.fea_dim = float(torch.prod(torch.tensor(input_shape[2:])))
        self.batch_size = input_shape[0]
        if self._stabilised:
            self.ff_normalization = normalization
            self.recurrent_elementwise_affine = stabilised.get("recurrent_elementwise_affine", False)
        else:
            self.normalization = normalization
        self.rnn = torch.nn.ModuleList()
        dim = self.fea_dim
        for _ in range(num_layers):
            self.rnn.append(_LiGRULayer(dim, hidden_size, num_layers, self.batch_size, dropout=dropout,
                                        nonlinearity=nonlinearity, normalization=normalization, bias=bias,
                                        bidirectional=bidirectional, stabilised=self._stabilised,
                                        recurrent_elementwise_affine=stabilised.get("recurrent_elementwise_affine",
                                                                                    False)))
            dim = hidden_size * 2 if bidirectional else hidden_size
        if re_init:
            for name, param in self.rnn.named_parameters():
                if ".u.weight" in name or name.startswith("u.weight") or "weight_hh" in name:
                    torch.nn.init.orthogonal_(param)

    def forward(self, x, hx=None):
        """SpeechBrain's forward: ``(output [N, T, D*H], hh)``."""
        if self.reshape and x.ndim == 4:
            x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        h = []
        if hx is not None and self.bidirectional:
            hx = hx.reshape(self.num_layers, self.batch_size * 2, self.hidden_size)
        for i, layer in enumerate(self.rnn):
            x = layer(x, hx=None if hx is None else hx[i])
            h.append(x[:, -1, :])
        h = torch.stack(h, dim=1)
        if self.bidirectional:
            h = h.reshape(h.shape[1] * 2, h.shape[0], self.hidden_size)
        else:
            h = h.transpose(0, 1)
        return x, h

    def stream(self, batch=1):
        """Streaming inference on CPU tensors: ``step(x)`` takes one frame ``[N, C]`` (or a chunk
        ``[N, k, C]``, batch-first like ``forward``) and returns ``[N, H]`` (``[N, k, H]``), the
        state of every layer carried (`fastrnn.core.stream.Stream` per layer; ``reset``, ``active``,
        ``state`` ``[L, N, H]`` as there). Eval mode and unidirectional only."""
        where = f"fastrnn.torch.{type(self).__name__}.stream"
        check_streamable(self, where)
        _check_stream_dtype(where, list(self.parameters()))
        return _LiGRUStream(self, batch, where)


class SLiGRU(LiGRU):
    """SpeechBrain's ``speechbrain.nnet.RNN.SLiGRU`` (1.1), run by fastrnn's fused kernels: `LiGRU`
    with a LayerNorm of the recurrent product (``layer_norm``, affine with
    ``recurrent_elementwise_affine``); the constructor takes ``ff_normalization``.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> net = fastrnn.torch.SLiGRU(hidden_size=5, input_shape=(4, 10, 20), bidirectional=True)
    >>> out, hh = net(torch.rand(4, 10, 20))
    >>> out.shape
    torch.Size([4, 10, 10])
    """

    _stabilised = True

    def __init__(self, hidden_size, input_shape, nonlinearity="relu", ff_normalization="batchnorm",
                 recurrent_elementwise_affine=False, num_layers=1, bias=True, dropout=0.0, re_init=True,
                 bidirectional=False):
        super().__init__(hidden_size, input_shape, nonlinearity, ff_normalization, num_layers, bias, dropout, re_init,
                         bidirectional, recurrent_elementwise_affine=recurrent_elementwise_affine)


def _speechbrain_kind(module):
    """"ligru"/"sligru" for SpeechBrain's LiGRU / SLiGRU modules (recognized by their class name
    and methods: importing SpeechBrain is not needed), else None."""
    cls = type(module)
    if cls.__name__ == "LiGRU" and hasattr(cls, "_forward_ligru"):
        return "ligru"
    if cls.__name__ == "SLiGRU" and hasattr(cls, "_forward_sligru"):
        return "sligru"
    return None


def _from_speechbrain(module):
    """The fastrnn twin of a SpeechBrain LiGRU / SLiGRU: the same submodules, parameters and buffers."""
    kind = _speechbrain_kind(module)
    new = (SLiGRU if kind == "sligru" else LiGRU).__new__(SLiGRU if kind == "sligru" else LiGRU)
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, list, set)) else v for k, v in module.__dict__.items()})
    new._speechbrain_types = (type(module), type(module.rnn[0]))
    for layer in new.rnn:
        layer.__class__ = _LiGRULayer
        layer.nonlinearity = module.nonlinearity
        layer.stabilised = kind == "sligru"
    return new


def _to_speechbrain(module, where, path):
    types = getattr(module, "_speechbrain_types", None)
    if types is None:
        raise ValueError(f"{where}: {path} is a fastrnn.torch {type(module).__name__} made by fastrnn, not converted "
                         "from SpeechBrain: there is no SpeechBrain class to return to")
    new = types[0].__new__(types[0])
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, list, set)) else v for k, v in module.__dict__.items()})
    new.__dict__.pop("_speechbrain_types", None)
    for layer in new.rnn:
        layer.__class__ = types[1]
    return new


def _retype(module, cls, where, path):
    """A `cls` module with `module`'s parameters (the same Parameter objects), buffers, hooks and
    settings: no re-initialisation, no use of the RNG."""
    if any(getattr(module, k, 0) for k in _REGULARIZERS):
        raise ValueError(f"{where}: {path} uses fastrnn's regularizers "
                         f"({', '.join(k for k in _REGULARIZERS if getattr(module, k, 0))}), which torch.nn "
                         "modules cannot represent")
    if getattr(module, "peephole", False):
        raise ValueError(f"{where}: {path} is a fastrnn.torch.LSTM with peepholes, which torch.nn.LSTM cannot "
                         "represent")
    if not getattr(module, "reset_after", True):
        raise ValueError(f"{where}: {path} is a fastrnn.torch.GRU with reset_after=False, which torch.nn.GRU "
                         "cannot represent")
    new = cls.__new__(cls)
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, list, set)) else v for k, v in module.__dict__.items()})
    for k in ("reset_after", "peephole", *_REGULARIZERS):
        new.__dict__.pop(k, None)
    if cls is GRU:
        new.reset_after = True
    new._init_flat_weights()
    return new


def _to_fast(module):
    """How `convert` replaces `module`, or None."""
    if type(module) in _TO_FAST:  # exact types: a subclass of torch.nn.LSTM may change its behaviour
        return lambda where, path: _retype(module, _TO_FAST[type(module)], where, path)
    if _speechbrain_kind(module):
        return lambda where, path: _from_speechbrain(module)
    return None


def _to_torch(module):
    """How `revert` replaces `module`, or None."""
    if type(module) in _TO_TORCH:
        return lambda where, path: _retype(module, _TO_TORCH[type(module)], where, path)
    if type(module) in (LiGRU, SLiGRU):
        return lambda where, path: _to_speechbrain(module, where, path)
    return None


def _swap(model, replacement, inplace, where):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    done = {}  # id(old) -> new: a module used in several places stays shared

    def twin(module, path):
        if id(module) not in done:
            done[id(module)] = replacement(module)(where, path)
        return done[id(module)]

    if replacement(model):
        return twin(model, "the model")
    found = [(parent, name, child, f"{prefix}.{name}" if prefix else name)
             for prefix, parent in model.named_modules()
             for name, child in parent.named_children() if replacement(child)]
    for parent, name, child, path in found:
        setattr(parent, name, twin(child, repr(path)))
    return model


def convert(model, inplace=False):
    """Replace every ``torch.nn.LSTM/GRU/RNN`` (exact types) in `model` by its fastrnn twin, and
    every SpeechBrain ``LiGRU`` / ``SLiGRU`` (``speechbrain.nnet.RNN``) by `LiGRU` / `SLiGRU`.

    The twins have the same settings and weights (the very Parameter objects, so with
    ``inplace=True`` an optimizer built before still works). Nested modules and containers
    (``Sequential``, ``ModuleList``, ``ModuleDict``) are searched; a module used at several places
    becomes one shared twin. Returns the model (a converted deep copy unless ``inplace``; a bare
    ``torch.nn.LSTM`` gives a ``fastrnn.torch.LSTM``; LSTMs with ``proj_size`` included).

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> model = torch.nn.ModuleDict({"enc": torch.nn.LSTM(3, 4), "head": torch.nn.Linear(4, 1)})
    >>> fast = fastrnn.torch.convert(model)
    >>> type(fast["enc"]).__module__, type(model["enc"]).__module__
    ('fastrnn.torch', 'torch.nn.modules.rnn')
    >>> torch.equal(fast["enc"].weight_ih_l0, model["enc"].weight_ih_l0)
    True
    """
    return _swap(model, _to_fast, inplace, "fastrnn.torch.convert")


def revert(model, inplace=False):
    """The inverse of `convert`: every ``fastrnn.torch.LSTM/GRU/RNN`` becomes its ``torch.nn`` twin,
    and every `LiGRU` / `SLiGRU` that `convert` made from SpeechBrain's module becomes that again.

    A GRU with ``reset_after=False`` or a module using fastrnn's regularizers has no torch
    equivalent and raises ``ValueError``, so does a `LiGRU` built by fastrnn (no SpeechBrain class
    to return to); `LayerNormLSTM` / `LayerNormGRU` are left as they are.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> model = torch.nn.Sequential(fastrnn.torch.RNN(3, 4))
    >>> type(fastrnn.torch.revert(model)[0])
    <class 'torch.nn.modules.rnn.RNN'>
    """
    return _swap(model, _to_torch, inplace, "fastrnn.torch.revert")


def _from_torch_quantized(module, where, path):
    """A fastrnn.torch twin of a module torch's ``quantize_dynamic`` made (per-tensor int8
    weights, float biases): its weights dequantized, its settings kept."""
    cls = {"LSTM": LSTM, "GRU": GRU}.get(module.mode)
    if cls is None or getattr(module, "dtype", torch.qint8) != torch.qint8:
        raise ValueError(f"{where}: {path} is a torch dynamic-quantized {module.mode} with dtype "
                         f"{getattr(module, 'dtype', None)}; fastrnn converts qint8 LSTM and GRU")
    wb = module._weight_bias()
    weights = {k: v.dequantize() if v.is_quantized else v for k, v in {**wb["weight"], **wb["bias"]}.items()}
    if weights["weight_hh_l0"].shape[1] != module.hidden_size:
        raise ValueError(f"{where}: {path} is a projected LSTM whose weight_hr torch's dynamic quantization did not "
                         "keep; quantize the float module with fastrnn.torch.quantize_dynamic instead")
    twin = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
               batch_first=module.batch_first, dropout=float(module.dropout), bidirectional=module.bidirectional)
    state = twin.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        raise ValueError(f"{where}: {path}: torch's quantized module has no {missing}")
    twin.load_state_dict({k: weights[k].float() for k in state})
    return twin


def _to_int8(module):
    """How `quantize_dynamic` replaces `module` (the same module set to int8, a fastrnn twin of a
    torch.nn, SpeechBrain or torch-quantized module), or None."""
    def int8(m):
        for layer in m.rnn if isinstance(m, LiGRU) else (m,):  # a Li-GRU stack: each of its layers
            layer.compute_dtype = "int8"
        m.requires_grad_(False)
        return m.eval()
    if isinstance(module, (_FastRNNBase, _LiGRULayer, LiGRU)):
        return lambda where, path: int8(module)
    if _speechbrain_kind(module):
        return lambda where, path: int8(_from_speechbrain(module))
    if type(module) in _TO_FAST:
        return lambda where, path: int8(_retype(module, _TO_FAST[type(module)], where, path))
    if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic") and hasattr(module, "_weight_bias") \
            and getattr(module, "mode", None) in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        return lambda where, path: int8(_from_torch_quantized(module, where, path))
    return None


def quantize_dynamic(model, inplace=False):
    """int8 inference (dynamic quantization, `fastrnn.quantize_dynamic`) for every recurrent
    module of `model`: fastrnn.torch's ``LSTM``/``GRU``/``RNN`` (and the LayerNorm ones),
    ``LiGRU``/``SLiGRU``, the exact ``torch.nn.LSTM/GRU/RNN`` and SpeechBrain's ``LiGRU``/``SLiGRU``
    (converted to their fastrnn twins first, as `convert` does),
    and the LSTM/GRU modules ``torch.ao.quantization.quantize_dynamic`` already quantized: their
    per-tensor int8 weights are dequantized and quantized again per output row, so the results
    agree with torch's within the quantization error, not bitwise.

    The modules are in eval mode with ``compute_dtype="int8"`` and parameters that do not require
    grad; a training-mode forward, or an input that requires grad, raises RuntimeError. The
    parameters stay float32, so ``state_dict`` and ``load_state_dict`` work as for the float
    module; the quantized weights are kept on the module and made again when a parameter changes.
    Returns the model (a deep copy unless ``inplace``). ValueError when it holds nothing to
    quantize.

    Examples
    --------
    >>> import torch, fastrnn.torch
    >>> model = torch.nn.Sequential(torch.nn.LSTM(8, 16))
    >>> q = fastrnn.torch.quantize_dynamic(model)
    >>> q[0]
    LSTM(8, 16, compute_dtype='int8')
    >>> x = torch.randn(5, 2, 8)
    >>> bool((q(x)[0] - model(x)[0]).abs().max() < 0.02)
    True
    """
    where = "fastrnn.torch.quantize_dynamic"
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not _to_int8(model) and not any(_to_int8(m) for m in model.modules()):
        raise ValueError(f"{where}: {type(model).__name__} holds no recurrent module to quantize (fastrnn.torch's, "
                         "torch.nn.LSTM/GRU/RNN, or torch's dynamic-quantized LSTM/GRU)")
    for m in model.modules():
        ps = list(m.parameters())  # a Li-GRU's weights are in its child Linear modules
        if _to_int8(m) and ps and (ps[0].dtype != torch.float32 or ps[0].device.type != "cpu"):
            raise ValueError(f"{where}: {type(m).__name__} has {ps[0].dtype} parameters on {ps[0].device}; int8 "
                             "quantizes float32 CPU modules")
    return _swap(model, _to_int8, inplace, where)
