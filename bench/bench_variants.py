"""Cost of fastrnn's cell variants and regularizers against the plain cells, and LayerNorm LSTM
against a straightforward PyTorch implementation. Prints a table.

    python bench/bench_variants.py                 # T=100 N=16 C=H=256, float32, 1 thread
    python bench/bench_variants.py --T 100 --N 1 --H 128 --reps 9

Times are medians over `--reps` repetitions, every configuration timed round-robin in one
process, on one thread (fastrnn and torch). "train" is forward + backward (BPTT and all
parameter gradients) of sum(output * g). The PyTorch baselines run the same math step by step
in a Python loop with autograd:
- "torch LN-LSTM loop": nn.Linear (W_ih, W_hh) + nn.LayerNorm x3 (Haste's formulation, exactly
  fastrnn.LayerNormLSTM's function; the script checks that the outputs agree);
- "torch LSTMCell+LayerNorm loop": nn.LSTMCell then nn.LayerNorm on h, the common recipe
  (cheaper, and a different model).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastrnn


def fastrnn_case(make, T, N, C, dtype, train):
    layer = make()
    x = np.random.default_rng(0).standard_normal((T, N, C)).astype(dtype)
    if not train:
        layer.eval()

        def run():
            layer(x)
        return run
    layer.train()

    def run():
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
    return run


def torch_cases(T, N, C, H, train):
    import torch
    torch.set_num_threads(1)

    class LNLSTM(torch.nn.Module):  # fastrnn.LayerNormLSTM's equations, one step at a time
        def __init__(self, C=C, H=H):
            super().__init__()
            self.H = H
            self.ih = torch.nn.Linear(C, 4 * H, bias=True)
            self.hh = torch.nn.Linear(H, 4 * H, bias=True)
            self.ln_ih = torch.nn.LayerNorm(4 * H, elementwise_affine=True, bias=False)
            self.ln_hh = torch.nn.LayerNorm(4 * H, elementwise_affine=True, bias=False)
            self.ln_c = torch.nn.LayerNorm(H)

        def forward(self, x):
            h = x.new_zeros(x.shape[1], self.H)
            c = x.new_zeros(x.shape[1], self.H)
            wx = self.ln_ih(x @ self.ih.weight.T)  # hoisted, like fastrnn's
            outs = []
            for t in range(x.shape[0]):
                a = wx[t] + self.ln_hh(h @ self.hh.weight.T) + self.ih.bias + self.hh.bias
                i, f, g, o = a.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
                outs.append(h)
            return torch.stack(outs)

    class CellLN(torch.nn.Module):  # nn.LSTMCell + nn.LayerNorm on h
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.LSTMCell(C, H)
            self.ln = torch.nn.LayerNorm(H)

        def forward(self, x):
            h = x.new_zeros(x.shape[1], H)
            c = x.new_zeros(x.shape[1], H)
            outs = []
            for t in range(x.shape[0]):
                h, c = self.cell(x[t], (h, c))
                h = self.ln(h)
                outs.append(h)
            return torch.stack(outs)

    x = torch.randn(T, N, C)
    cases = {}
    for name, mod in (("torch LN-LSTM loop", LNLSTM()), ("torch LSTMCell+LayerNorm loop", CellLN())):
        if train:
            def run(mod=mod):
                mod.zero_grad()
                mod(x).sum().backward()
        else:
            def run(mod=mod):
                with torch.no_grad():
                    mod(x)
        cases[name] = run
    return cases, LNLSTM


def check_torch_ln_lstm(LNLSTM, C, H):
    """The PyTorch baseline computes fastrnn.LayerNormLSTM's function (same weights)."""
    import torch
    mod = LNLSTM(C, H).double()
    layer = fastrnn.LayerNormLSTM(C, H, dtype=np.float64)
    with torch.no_grad():
        for a, b in ((mod.ih.weight, "weight_ih_l0"), (mod.hh.weight, "weight_hh_l0"), (mod.ih.bias, "bias_ih_l0"),
                     (mod.hh.bias, "bias_hh_l0"), (mod.ln_ih.weight, "ln_ih_weight_l0"),
                     (mod.ln_hh.weight, "ln_hh_weight_l0"), (mod.ln_c.weight, "ln_c_weight_l0"),
                     (mod.ln_c.bias, "ln_c_bias_l0")):
            layer.params[b][...] = (a + torch.rand_like(a) * 0.1).numpy()
            a.copy_(torch.from_numpy(layer.params[b]))
    x = np.random.default_rng(1).standard_normal((7, 3, C))
    with torch.no_grad():
        theirs = mod(torch.from_numpy(x)).numpy()
    mine = layer.eval()(x)[0]
    return float(np.max(np.abs(mine - theirs)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--N", type=int, default=16)
    ap.add_argument("--C", type=int, default=None, help="input size (default: H)")
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    args = ap.parse_args()
    T, N, H = args.T, args.N, args.H
    C = args.C or H
    dtype = np.float32
    fastrnn.set_num_threads(1)
    kw = dict(dtype=dtype, rng=0)
    configs = {
        "LSTM": lambda: fastrnn.LSTM(C, H, **kw),
        "LSTM peephole": lambda: fastrnn.LSTM(C, H, peephole=True, **kw),
        f"LSTMP proj_size={H // 2}": lambda: fastrnn.LSTM(C, H, proj_size=H // 2, **kw),
        "LayerNormLSTM": lambda: fastrnn.LayerNormLSTM(C, H, **kw),
        "LSTM recurrent_dropout=0.25": lambda: fastrnn.LSTM(C, H, recurrent_dropout=0.25, **kw),
        "LSTM zoneout_h=0.1 zoneout_c=0.05": lambda: fastrnn.LSTM(C, H, zoneout_h=0.1, zoneout_c=0.05, **kw),
        "LSTM weight_drop=0.5": lambda: fastrnn.LSTM(C, H, weight_drop=0.5, **kw),
        "GRU": lambda: fastrnn.GRU(C, H, **kw),
        "LayerNormGRU": lambda: fastrnn.LayerNormGRU(C, H, **kw),
    }
    baseline_of = {name: ("GRU" if "GRU" in name else "LSTM") for name in configs}
    cases = {}
    for name, make in configs.items():
        cases[(name, "fwd")] = fastrnn_case(make, T, N, C, dtype, False)
        cases[(name, "train")] = fastrnn_case(make, T, N, C, dtype, True)
    torch_err = None
    if not args.no_torch:
        try:
            for train in (False, True):
                tc, LNLSTM = torch_cases(T, N, C, H, train)
                cases.update({(k, "train" if train else "fwd"): v for k, v in tc.items()})
            torch_err = check_torch_ln_lstm(LNLSTM, 5, 6)
        except ImportError:
            pass

    times = {k: [] for k in cases}
    for run in cases.values():  # warm-up (allocations, page faults, lazy init)
        run()
    for _ in range(args.reps):
        for k, run in cases.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    print(f"fastrnn {fastrnn.__version__}, ISA {fastrnn.get_isa()}, 1 thread, float32, T={T} N={N} C={C} H={H}, "
          f"median of {args.reps}")
    print(f"{'configuration':38s} {'forward ms':>11s} {'train ms':>10s} {'train vs plain':>15s}")
    names = list(configs) + [k for k in ("torch LN-LSTM loop", "torch LSTMCell+LayerNorm loop") if (k, "fwd") in med]
    for name in names:
        base = baseline_of.get(name)
        ratio = f"{med[(name, 'train')] / med[(base, 'train')]:.2f}x {base}" if base else ""
        print(f"{name:38s} {med[(name, 'fwd')]:11.2f} {med[(name, 'train')]:10.2f} {ratio:>15s}")
    if ("torch LN-LSTM loop", "train") in med:
        ln = med[("LayerNormLSTM", "train")]
        print(f"\nLayerNormLSTM training speed-up over the PyTorch loop (same function): "
              f"{med[('torch LN-LSTM loop', 'train')] / ln:.1f}x; over LSTMCell+LayerNorm: "
              f"{med[('torch LSTMCell+LayerNorm loop', 'train')] / ln:.1f}x "
              f"(forward: {med[('torch LN-LSTM loop', 'fwd')] / med[('LayerNormLSTM', 'fwd')]:.1f}x)")
        print(f"max |fastrnn - torch loop| on a float64 check: {torch_err:.1e}")


if __name__ == "__main__":
    main()
