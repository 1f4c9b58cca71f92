"""python -m fastrnn demo | bench | info"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastrnn
from fastrnn import _bench


def _sine_batch(rng, T, N):
    """Next-value prediction on noisy sine waves of random frequency and phase."""
    freq = rng.uniform(0.05, 0.25, size=(1, N, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(1, N, 1))
    t = np.arange(T + 1, dtype=np.float64)[:, None, None]
    wave = np.sin(freq * t + phase) + 0.01 * rng.standard_normal((T + 1, N, 1))
    return wave[:-1].astype(np.float32), wave[1:].astype(np.float32)


def demo(args):
    """Train an LSTM + linear head with Adam on sine-wave prediction and print the loss falling."""
    rng = np.random.default_rng(args.seed)
    fastrnn.set_num_threads(args.threads)
    lstm = fastrnn.LSTM(1, args.hidden, rng=rng)
    head_w = (rng.standard_normal((1, args.hidden)) / np.sqrt(args.hidden)).astype(np.float32)
    head_b = np.zeros(1, np.float32)
    params = list(lstm.params.values()) + [head_w, head_b]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    print(f"fastrnn {fastrnn.__version__} demo: LSTM(1, {args.hidden}) + linear head, next-step sine prediction "
          f"(T={args.seq_len}, N={args.batch}, isa={fastrnn.get_isa()}, threads={fastrnn.get_num_threads()})")
    print(f"{'step':>6} {'mse':>10}")
    start = time.perf_counter()
    first = last = None
    for step in range(1, args.steps + 1):
        x, y = _sine_batch(rng, args.seq_len, args.batch)
        out, _ = lstm(x)
        pred = out @ head_w.T + head_b
        err = pred - y
        loss = float(np.mean(err**2))
        first = loss if first is None else first
        last = loss
        g_pred = (2.0 / err.size) * err
        g_w = (g_pred.reshape(-1, 1).T @ out.reshape(-1, args.hidden)).astype(np.float32)
        g_b = g_pred.sum(axis=(0, 1)).astype(np.float32)
        lstm.zero_grad()
        lstm.backward((g_pred @ head_w).astype(np.float32))
        grads = list(lstm.grads.values()) + [g_w, g_b]
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p -= (lr * (m[i] / (1 - b1**step)) / (np.sqrt(v[i] / (1 - b2**step)) + eps)).astype(np.float32)
        if step == 1 or step % max(1, args.steps // 10) == 0:
            print(f"{step:>6} {loss:>10.5f}")
    print(f"loss {first:.4f} -> {last:.4f} in {time.perf_counter() - start:.1f} s")
    return 0


def info(_args):
    print(f"fastrnn {fastrnn.__version__}")
    print(f"isa: {fastrnn.get_isa()} (available: {', '.join(fastrnn.available_isas())})")
    print(f"threads: {fastrnn.get_num_threads()}")
    print("blas: scipy-openblas32")
    print("dtypes: float32, float64")
    try:
        import torch  # noqa: F401
        print(f"torch: {torch.__version__}")
    except ImportError:
        print("torch: not installed")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastrnn", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train an LSTM on sine waves and print the loss")
    d.add_argument("--steps", type=int, default=200)
    d.add_argument("--hidden", type=int, default=32)
    d.add_argument("--seq-len", type=int, default=50)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=fastrnn.get_num_threads())
    d.set_defaults(func=demo)
    b = sub.add_parser("bench", help="compare fastrnn with torch.nn, ONNX Runtime and NumPy (ms, GFLOP/s, speedups)")
    _bench.add_arguments(b).set_defaults(func=_bench.run_args)
    i = sub.add_parser("info", help="version, ISA, threads, BLAS")
    i.set_defaults(func=info)
    args = p.parse_args(argv)
    for name in ("steps", "hidden", "seq_len", "batch", "threads"):
        if getattr(args, name, 1) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
