"""`fastrnn.torch` modules on CUDA tensors: the CUDA backend (`fastrnn.cuda`) on torch's memory.

Zero-copy: the kernels read the input, states and parameters where torch keeps them and write
outputs, the training cache, gradients and the workspace into tensors allocated by torch's
caching allocator on the tensors' device; everything is enqueued on torch's current stream of
that device, so it orders with the surrounding torch work like a torch operator. Dropout masks
come from torch's CPU generator (as on the CPU path) and are copied to the device. Imported by
`fastrnn.torch` only when it meets a CUDA tensor; like the CPU path, the whole stack is one
autograd node whose backward keeps the cache (``retain_graph`` and ``gradcheck`` work).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from . import _C
from .core import cuda
from .core import functional as F


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _device_index(t):
    """CUDA device index of tensor `t`; None for a CPU tensor (tests on the host emulator)."""
    if t.device.type != "cuda":
        return None
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def _on_device(mod, index):
    """The backend's current device is `index` inside, the caller's again after (the CUDA
    runtime's current device is torch's too: leaving it changed moves torch's later work)."""
    previous = None if index is None else mod.get_device()
    if previous is None or previous == index:
        yield
        return
    mod.set_device(index)
    try:
        yield
    finally:
        mod.set_device(previous)


class _Call:
    """Sizes, device and stream of one call, and the contiguous time-major tensors it runs on."""

    def __init__(self, spec, x, weights, masks):
        cuda.check_plain(spec.where, **spec.variants, noise=spec.noise)
        self.mod = cuda._require(spec.where)
        self.spec = spec
        self.dev = x.device
        self.index = _device_index(x)  # the kernels run with it current (_on_device)
        # CPU tensors reach here only in tests, on the host emulator.
        self.stream = torch.cuda.current_stream(self.dev).cuda_stream if self.dev.type == "cuda" else 0
        self.x = (x.transpose(0, 1) if spec.batch_first else x).contiguous()
        self.T, self.N, self.C = self.x.shape
        self.H = weights[1].shape[1]
        self.L, self.D = spec.num_layers, 2 if spec.bidirectional else 1
        self.dtype = x.dtype
        self.weights = [w.contiguous() for w in weights]
        self.masks = None if masks is None else masks.to(self.dev).contiguous()
        self.lengths = None if spec.lengths is None else torch.as_tensor(spec.lengths, dtype=torch.int64).to(self.dev)
        self.lstm = spec.cell == "lstm"
        # The core's plan of the stack (its layout and sizes); the weights go with each call.
        self.plan = F._config(spec.cell, self.C, self.H, self.L, spec.bidirectional, spec.bias,
                              str(self.dtype).replace("torch.", ""), reset_after=spec.reset_after)

    @property
    def double(self):
        return self.dtype == torch.float64

    def new(self, *shape, dtype=None):
        return torch.empty(shape, dtype=dtype or self.dtype, device=self.dev)

    @staticmethod
    def pointers(tensors):
        """Device addresses in the plan's order (torch's flat weight order)."""
        return [_ptr(t) for t in tensors]

    def forward(self, h0, c0, training):
        """out [T, N, D*H], h_n, c_n (LSTM) and the cache (training) as new tensors."""
        T, N, H, L, D = self.T, self.N, self.H, self.L, self.D
        out, h_n = self.new(T, N, D * H), self.new(L * D, N, H)
        c_n = self.new(L * D, N, H) if self.lstm else None
        dropout = training and self.masks is not None
        cache = self.new(self.plan.cache_size(T, N, dropout)) if training else None
        nbytes = self.mod.forward_workspace_bytes(self.plan, T, N, training)
        work = self.new(nbytes, dtype=torch.uint8)
        h0, c0 = (None if s is None else s.contiguous() for s in (h0, c0))
        with _on_device(self.mod, self.index):
            self.mod.forward(self.plan, T, N, dropout, _ptr(self.x), self.pointers(self.weights), _ptr(h0),
                             _ptr(c0), _ptr(self.lengths), _ptr(self.masks) if dropout else 0, _ptr(out), _ptr(h_n),
                             _ptr(c_n), _ptr(cache), _ptr(work), nbytes, self.stream)
        return out, h_n, c_n, cache

    def batch_layout(self, a):
        """Time-major `a` [T, N, ...] in the caller's layout."""
        return a.transpose(0, 1).contiguous() if self.spec.batch_first else a

    def context(self, cache):
        """A functional Context over the device cache, for fastrnn.diagnostics (host copy of x)."""
        if self.dev.type == "cuda":
            torch.cuda.current_stream(self.dev).synchronize()  # the cache is read on another stream
        dtype = np.dtype(str(self.dtype).replace("torch.", ""))
        s = self.spec
        return F.Context(cell=s.cell, reset_after=s.reset_after, bias=s.bias, T=self.T, N=self.N, C=self.C, H=self.H,
                         K=self.H, L=self.L, D=self.D, dtype=dtype, x=self.x.detach().cpu().numpy(), plan=self.plan,
                         names=s.names, lengths=s.lengths, masks=self.masks, batch_first=s.batch_first,
                         cache=cuda.DeviceArray(cache.data_ptr(), cache.shape, dtype, owner=cache),
                         unbatched=False, where=s.where, device="cuda")


class _CudaRNNFunction(torch.autograd.Function):
    """`fastrnn.torch._RNNFunction` on the GPU: one forward with cache, one BPTT call."""

    @staticmethod
    def forward(ctx, spec, x, h0, c0, masks, *weights):
        call = _Call(spec, x, weights, masks)
        out, h_n, c_n, cache = call.forward(h0, c0, training=True)
        ctx.fctx = None
        if spec.recorders:  # fastrnn.diagnostics.record: gate statistics from the cache
            ctx.fctx = call.context(cache)
            F.notify_forward(spec.recorders, spec.module, ctx.fctx)
        ctx.save_for_backward(call.x, cache, call.masks, call.lengths, *call.weights)
        call.x = call.masks = call.lengths = call.weights = None  # kept by autograd from here on
        ctx.call = call
        ctx.set_materialize_grads(False)  # outputs without a gradient reach the kernels as None
        outs = (call.batch_layout(out), h_n)
        return outs if c_n is None else outs + (c_n,)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h_n, grad_c_n=None):
        call = ctx.call
        x, cache, masks, lengths, *weights = ctx.saved_tensors
        T, N, C, H, L, D = call.T, call.N, call.C, call.H, call.L, call.D
        go = None if grad_out is None else (grad_out.transpose(0, 1) if call.spec.batch_first else grad_out)
        go, ghn, gcn = (None if g is None else g.contiguous() for g in (go, grad_h_n, grad_c_n if call.lstm else None))
        grads = [torch.zeros_like(w) for w in weights]
        grad_x, grad_h0 = call.new(T, N, C), call.new(L * D, N, H)
        grad_c0 = call.new(L * D, N, H) if call.lstm else None
        record = ctx.fctx is not None
        diag = [torch.zeros((L, D, T), dtype=torch.float64, device=call.dev) if record and (i != 1 or call.lstm)
                else None for i in range(4)]
        nbytes = call.mod.backward_workspace_bytes(call.plan, T, N, True, record)
        work = call.new(nbytes, dtype=torch.uint8)
        clip = call.spec.bptt_clip or 0.0
        # retain=True: autograd may run this node again (retain_graph=True, gradcheck).
        with _on_device(call.mod, call.index):
            call.mod.backward(call.plan, T, N, masks is not None, _ptr(x), call.pointers(weights), _ptr(lengths),
                              _ptr(masks), _ptr(cache), _ptr(go), _ptr(ghn), _ptr(gcn), _ptr(grad_x), _ptr(grad_h0),
                              _ptr(grad_c0), call.pointers(grads), True, clip, *map(_ptr, diag), _ptr(work), nbytes,
                              call.stream)
        if record:  # the per-step records, copied to the host once
            h_sq, c_sq, r_sq, p_sq = (None if d is None else d.cpu().numpy() for d in diag)
            ctx.fctx.grad_h_norm = np.sqrt(h_sq)
            ctx.fctx.grad_c_norm = None if c_sq is None else np.sqrt(c_sq)
            ctx.fctx.propagation = F._propagation(r_sq, p_sq)
            for r in call.spec.recorders:
                r._on_backward(call.spec.module, ctx.fctx)
        need = ctx.needs_input_grad

        def wrap(t, i):
            return t if need[i] and t is not None else None
        return (None, wrap(call.batch_layout(grad_x), 1), wrap(grad_h0, 2), wrap(grad_c0, 3), None,
                *(wrap(g, 5 + i) for i, g in enumerate(grads)))


def run(spec, x, h0, c0, masks, weights):
    """Outputs ``(out, h_n[, c_n])`` of `fastrnn.torch`'s forward, computed on the GPU."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, *weights)):
        return _CudaRNNFunction.apply(spec, x, h0, c0, masks, *weights)
    # Nothing to differentiate: no cache kept (one is made and dropped only to apply dropout).
    call = _Call(spec, x, weights, masks)
    out, h_n, c_n, _ = call.forward(h0, c0, training=masks is not None)
    return tuple(t for t in (call.batch_layout(out), h_n, c_n) if t is not None)
