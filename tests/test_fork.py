"""Fork safety: use fastrnn (2 threads, so its pool and OpenBLAS's exist) in a parent, fork, and
use it again in the child — like DataLoader workers. libgomp hangs here; fastrnn's own pool resets
itself in the child (pthread_atfork) and BLAS calls hold a fork guard. Every wait has a timeout,
so a hang fails the test instead of stalling the run."""
import multiprocessing
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import fastrnn

TIMEOUT = 120.0


def _problem(dtype=np.float32):
    layer = fastrnn.LSTM(16, 48, num_layers=2, bidirectional=True, dtype=dtype, rng=0)
    x = np.random.default_rng(0).standard_normal((40, 6, 16)).astype(dtype)
    return layer, x


def _train_step(layer, x):
    """out, grad_x and the weight gradients of one training step (bitwise comparable)."""
    layer.train()
    layer.zero_grad()
    out, _ = layer(x)
    grad_x = layer.backward(np.cos(out))[0]
    return [out, grad_x] + [g.copy() for g in layer.grads.values()]


def _fork():
    # Python >= 3.12 warns on fork() in a process with threads (ours: the pools). That general
    # warning is what this file tests against, for fastrnn, so it is silenced here only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _wait(pid, timeout=TIMEOUT):
    """Exit code of child `pid`, or None after killing it when it outlives `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _mp_child(queue):
    fastrnn.set_num_threads(2)
    queue.put(_train_step(*_problem()))


def test_multiprocessing_fork_child_matches_parent(two_threads):
    layer, x = _problem()
    want = _train_step(layer, x)  # the parent's pools exist now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        procs = [ctx.Process(target=_mp_child, args=(queue,)) for _ in range(2)]
        for p in procs:
            p.start()
    try:
        results = [queue.get(timeout=TIMEOUT) for _ in procs]
    finally:
        for p in procs:
            p.join(TIMEOUT)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    queue.close()
    queue.join_thread()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_os_fork_child_matches_parent(two_threads, dtype):
    layer, x = _problem(dtype)
    want = _train_step(layer, x)
    pid = _fork()
    if pid == 0:  # child: report through the exit code only
        code = 1
        try:
            fastrnn.set_num_threads(2)
            got = _train_step(layer, x)  # the parent's layer, inherited
            code = 0 if all(np.array_equal(a, b) for a, b in zip(got, want)) else 3
        finally:
            os._exit(code)
    assert _wait(pid) == 0, "child hung (killed) or computed different results"


def test_fork_while_another_thread_runs_fastrnn(two_threads):
    """Regression: a fork while another thread was inside a GEMM hung the child (it inherited
    OpenBLAS's level-3 lock) and the parent (OpenBLAS stopped its workers under the running GEMM)."""
    layer, x = _problem()
    want = layer.eval()(x)[0]
    busy = fastrnn.GRU(32, 64, bidirectional=True, rng=1).eval()
    xb = np.random.default_rng(1).standard_normal((100, 16, 32)).astype(np.float32)
    stop = threading.Event()

    def background():
        while not stop.is_set():
            busy(xb)

    t = threading.Thread(target=background)
    t.start()
    codes = []
    try:
        for _ in range(8):
            time.sleep(0.005)
            pid = _fork()
            if pid == 0:
                code = 1
                try:
                    fastrnn.set_num_threads(2)
                    code = 0 if np.array_equal(layer(x)[0], want) else 3
                finally:
                    os._exit(code)
            codes.append(_wait(pid, timeout=60))
    finally:
        stop.set()
        t.join()
    assert codes == [0] * 8, f"exit codes (None = hung): {codes}"


class _LayerDataset:
    """A torch Dataset whose items are computed by a fastrnn layer (in the DataLoader workers)."""

    def __init__(self, layer, x):
        self.layer, self.x = layer, x

    def __len__(self):
        return self.x.shape[1]

    def __getitem__(self, i):
        fastrnn.set_num_threads(2)
        out, _ = self.layer(self.x[:, i:i + 1])
        return out[:, 0]


def test_torch_dataloader_fork_workers(two_threads):
    torch = pytest.importorskip("torch")
    layer, x = _problem()
    layer.eval()
    want = np.stack([layer(x[:, i:i + 1])[0][:, 0] for i in range(x.shape[1])])
    import fastrnn.torch as ft
    ft.LSTM(16, 8)(torch.zeros(3, 2, 16))  # the torch front end used in the parent too
    loader = torch.utils.data.DataLoader(_LayerDataset(layer, x), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork", timeout=TIMEOUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        got = np.concatenate([b.numpy() for b in loader])
    np.testing.assert_array_equal(got, want)


# ---- fastrnn.torch with more than one thread ---------------------------------------------------
# With >1 thread on both sides, fastrnn.torch runs its parallel regions on torch's OpenMP team in
# the parent. libgomp cannot run a team in a child forked after that (the child waits forever for
# the parent's workers): a forked child must run them on fastrnn's own pool, with 2 threads.

_TORCH = {}  # the module and input, set in the parent before forking (inherited by the children)


def _torch_step():
    """Output, input gradient and weight gradients of one training step, and its parallel regions."""
    import torch
    m, x = _TORCH["module"], _TORCH["x"]
    m.zero_grad()
    x = x.detach().requires_grad_(True)
    fastrnn._C._record_regions(True)
    try:
        out, (h_n, _) = m(x)
        (out.square().sum() + h_n.sum()).backward()
    finally:
        regions = fastrnn._C._record_regions(False)
    return [t.detach().numpy().copy() for t in (out, x.grad, *(p.grad for p in m.parameters()))], regions


def _recurrences(regions):
    """(threads that ran, on what) of each recurrence region."""
    return {(ran, on) for what, asked, ran, on in regions if what == "recurrence"}


@pytest.fixture
def torch_two_threads(two_threads):
    """torch and fastrnn on 2 threads, a small bidirectional fastrnn.torch LSTM (each direction on
    its own thread; the tensors are too small for torch's own operators to go parallel, which hang
    in a forked child for the same reason)."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    _TORCH.update(module=ft.LSTM(16, 48, num_layers=2, bidirectional=True), x=torch.randn(20, 4, 16))
    backoff = fastrnn._C._set_thread_backoff(False)  # the threads a step uses: the planner's choice only
    yield ft
    fastrnn._C._set_thread_backoff(backoff)
    _TORCH.clear()
    torch.set_num_threads(saved)


def test_torch_frontend_in_a_child_forked_after_a_two_thread_call(torch_two_threads):
    want, regions = _torch_step()
    expected_parent = "openmp" if torch_two_threads._torch_omp() else "pool"
    assert _recurrences(regions) == {(2, expected_parent)}
    pid = _fork()
    if pid == 0:  # child: report through the exit code only
        code = 1
        try:
            got, regions = _torch_step()
            code = 3 if not all(np.array_equal(a, b) for a, b in zip(got, want)) else \
                4 if _recurrences(regions) != {(2, "pool")} else 0
        finally:
            os._exit(code)
    assert _wait(pid, timeout=60) == 0, "child hung (None: killed), computed different results (3) or " \
                                        "did not run on fastrnn's pool with 2 threads (4)"


def _torch_pool_task(_):
    return _torch_step()


def test_torch_frontend_in_a_multiprocessing_fork_pool(torch_two_threads):
    want, _ = _torch_step()
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():  # Python >= 3.12: fork with threads running (see _fork)
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = ctx.Pool(2)
    try:
        results = pool.map_async(_torch_pool_task, range(4)).get(timeout=60)
    except multiprocessing.TimeoutError:
        pytest.fail("the fork pool's workers hung")
    finally:
        pool.terminate()
        pool.join()
    for got, regions in results:
        assert _recurrences(regions) == {(2, "pool")}
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
