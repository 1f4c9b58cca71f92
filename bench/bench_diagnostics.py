"""Cost of recording gradient diagnostics: a training step (forward + backward) with and without
`fastrnn.diagnostics.record`, round-robin in one process, median of per-round ratios.

    python bench/bench_diagnostics.py [--shapes A B F] [--cells lstm gru rnn] [--threads 1]

Recording adds, inside the kernels, a few flops per element of the state gradient (per-step
norms and propagation records) and, after the forward, one pass over the training cache (gate
saturation, first non-finite value); `spectra=False` skips the power iterations on W_hh, which
cost O(iterations * G * H^2) per report regardless of T and N.
"""
import argparse
import time

import numpy as np

import fastrnn

SHAPES = {"A": (100, 1, 128), "B": (100, 16, 256), "C": (100, 64, 512), "D": (50, 128, 1024),
          "E": (200, 32, 256), "F": (1000, 8, 64)}
LAYERS = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn": fastrnn.RNN}


def step(layer, x, g, rec_kw=None):
    if rec_kw is None:
        out, _ = layer(x)
        layer.backward(g)
        return
    with fastrnn.diagnostics.record(layer, **rec_kw):
        out, _ = layer(x)
        layer.backward(g)


def timed(fn, min_time):
    n, t = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - start
        if t >= min_time:
            return t / n
        n *= 2


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["A", "B", "F"], choices=sorted(SHAPES))
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"], choices=sorted(LAYERS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.2)
    args = p.parse_args(argv)
    fastrnn.set_num_threads(args.threads)
    print(f"fastrnn {fastrnn.__version__}, isa {fastrnn.get_isa()}, {args.threads} thread(s); "
          "time of one training step, median of per-round ratios")
    print(f"{'cell':<5} {'shape':<16} {'plain ms':>9} {'record':>8} {'record, no spectra':>19}")
    for cell in args.cells:
        for name in args.shapes:
            T, N, H = SHAPES[name]
            layer = LAYERS[cell](H, H, rng=0)
            x = np.random.default_rng(0).standard_normal((T, N, H)).astype(np.float32)
            g = np.ones((T, N, H), np.float32)
            variants = [None, {}, {"spectra": False}]
            for v in variants:
                step(layer, x, g, v)  # warm-up
            times = [[] for _ in variants]
            for r in range(args.rounds):
                order = list(range(len(variants)))
                order = order[r % len(order):] + order[:r % len(order)]
                for i in order:
                    times[i].append(timed(lambda: step(layer, x, g, variants[i]), args.min_time))
            base = np.array(times[0])
            ratios = [np.median(np.array(t) / base) for t in times[1:]]
            print(f"{cell:<5} {name} {str(SHAPES[name]):<14} {np.median(base) * 1e3:>9.3f} "
                  f"{(ratios[0] - 1) * 100:>+7.1f}% {(ratios[1] - 1) * 100:>+18.1f}%")


if __name__ == "__main__":
    main()
