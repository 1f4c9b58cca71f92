"""int8 inference against float32 and torch: `python bench/bench_int8.py [lstm] [gru]`.

One thread, best of 5 after a warm-up, reference shapes A-F (T, N, H; C = H) of `fastrnn bench`;
per shape fastrnn float32, fastrnn int8 (`layer.quantize_dynamic()`), torch float32 and torch's
dynamic int8 (`torch.ao.quantization.quantize_dynamic`), all in the same run (docs/precision.md)."""
import sys
import time
import warnings

import numpy as np

import fastrnn
from fastrnn.bench.engine import SHAPES


def best(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main(cells):
    import torch
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch 2.13's quantized-tensor APIs
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    fastrnn.set_num_threads(1)
    torch.set_num_threads(1)
    kinds = {"lstm": (fastrnn.LSTM, torch.nn.LSTM), "gru": (fastrnn.GRU, torch.nn.GRU)}
    print("cell shape   fp32 ms   int8 ms  int8/fp32 | torch fp32 ms  torch int8 ms | vs torch fp32  vs torch int8")
    for cell in cells:
        ours, theirs = kinds[cell]
        for name, s in SHAPES.items():
            layer = ours(s.C, s.H, rng=0).eval()
            q = layer.quantize_dynamic()
            x = np.random.default_rng(0).standard_normal((s.T, s.N, s.C)).astype(np.float32)
            tm = theirs(s.C, s.H).eval()
            # quantize_dynamic swaps submodules only: a bare nn.LSTM would come back unquantized
            tq = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(tm), {theirs}, dtype=torch.qint8)[0]
            assert type(tq).__module__.startswith("torch.ao.nn.quantized"), type(tq)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                tf, tqq = best(lambda: tm(xt)), best(lambda: tq(xt))
            a, b = best(lambda: layer(x)), best(lambda: q(x))
            print(f"{cell:4} {name}  {a * 1e3:9.2f} {b * 1e3:9.2f}  {a / b:8.2f}x | {tf * 1e3:13.2f} {tqq * 1e3:14.2f} |"
                  f" {tf / b:12.2f}x {tqq / b:12.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["lstm", "gru"])
