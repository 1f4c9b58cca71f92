"""One short process for tests/test_exit.py: use fastrnn on 2 threads, with a daemon thread still
inside fastrnn calls, then exit normally (status 0 expected).

    python exit_worker.py plain|torch|torch_omp|exception

At exit CPython ends a daemon thread that asks for the GIL back with pthread_exit (Python < 3.14);
its forced unwinding aborts the process ("terminate called without an active exception") if it
meets a noexcept C++ frame. The daemon thread loops over fastrnn calls, so at exit it is inside
one (GIL released) most of the time and asks for the GIL back right after.

- plain: the NumPy API (fastrnn's own pool).
- torch: a fastrnn.torch training step with torch on 1 thread (fastrnn's pool); the daemon
  thread calls the NumPy API in this process that has torch loaded.
- torch_omp: torch and fastrnn on 2 threads: the fastrnn.torch step and the daemon thread's calls
  run their regions on torch's OpenMP team.
The daemon thread calls no torch operator: torch's own bindings give the GIL back in noexcept
frames too (a daemon thread inside Tensor.detach at exit aborted 3 of 30 processes, backtrace
in torch::autograd::THPVariable_detach), which fastrnn cannot change.
- exception: the daemon thread's calls fail inside the core (the C++ scratch allocation, under an
  address-space limit: std::bad_alloc -> MemoryError), and the main thread leaves by raising
  SystemExit(0) while handling a ValueError from fastrnn.
"""
import resource
import sys
import threading

import numpy as np

import fastrnn

fastrnn.set_num_threads(2)
rng = np.random.default_rng(0)


def background(call):
    """Runs call() in a loop on a daemon thread, from its first completed call on."""
    ready = threading.Event()

    def loop():
        call()
        ready.set()
        while True:
            call()

    threading.Thread(target=loop, daemon=True).start()
    ready.wait()


def vm_size():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


scenario = sys.argv[1]
if scenario == "plain":
    layer = fastrnn.LSTM(32, 128, bidirectional=True, rng=0)
    x = rng.standard_normal((100, 16, 32)).astype(np.float32)
    twin = fastrnn.LSTM(32, 128, bidirectional=True, rng=0).eval()
    background(lambda: twin(x))
    out, _ = layer(x)
    layer.backward(np.ones_like(out))
elif scenario in ("torch", "torch_omp"):
    import torch

    import fastrnn.torch as ft
    torch.set_num_threads(2 if scenario == "torch_omp" else 1)
    torch.manual_seed(0)
    m = ft.LSTM(32, 128, bidirectional=True)
    x = torch.randn(100, 16, 32)
    twin = fastrnn.LSTM(32, 128, bidirectional=True, rng=0).eval()
    xn = x.numpy()
    background(lambda: ft._on_torch_threads(twin, xn))  # torch's OpenMP team when torch has >1 thread
    m(x)[0].sum().backward()
elif scenario == "exception":
    small = fastrnn.GRU(3, 8, rng=0)
    small(np.ones((5, 2, 3), np.float32))
    # Inference of a 2-layer RNN with T*N = 2^21: NumPy's output (128 MiB) fits under the limit,
    # the core's scratch (384 MiB) does not.
    big = fastrnn.RNN(1, 16, num_layers=2, rng=0).eval()
    x = np.ones((2**10, 2**11, 1), np.float32)

    def fail():
        try:
            big(x)
        except MemoryError:
            return
        raise SystemExit("exit_worker: no MemoryError under the address-space limit")
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (256 << 20), resource.RLIM_INFINITY))
    background(fail)
    try:
        small(np.ones((5, 2, 4), np.float32))  # wrong input size: ValueError
    except ValueError:
        raise SystemExit(0)
    raise SystemExit("exit_worker: no ValueError for a wrong input size")
else:
    raise SystemExit(f"exit_worker: unknown scenario {scenario!r}")
