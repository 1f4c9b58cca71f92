"""Threads and the GIL: kernels release the GIL, concurrent calls are correct, training one layer
from two threads at once raises, and the C++ thread pool survives jobs of varying widths."""
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F

from util import make_layer

HERE = os.path.dirname(os.path.abspath(__file__))


def _progress_while(call, attempts=5, before=None):
    """Whether another Python thread ran while `call()` was inside fastrnn, in one of `attempts`.

    The switch interval is set to 60 s, so a thread holding the GIL keeps it until it releases it
    itself: the main thread can only run between `inside` and `done` when the kernel dropped the
    GIL (the Python around the kernel does no GIL-releasing NumPy work for these inputs).
    `before()` runs first on the same thread, outside that window (the forward of a backward).
    """
    old = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        for _ in range(attempts):
            inside, done = threading.Event(), threading.Event()

            def work():
                if before is not None:
                    before()
                inside.set()
                call()
                done.set()

            t = threading.Thread(target=work)
            t.start()
            inside.wait()
            steps = 0
            while steps < 20 and not done.is_set():
                steps += 1
                time.sleep(0)  # let the worker take the GIL back when the kernel returns
            ran_meanwhile = steps == 20 and not done.is_set()
            t.join()
            if ran_meanwhile:
                return True
        return False
    finally:
        sys.setswitchinterval(old)


def _kernel_call(what):
    """(before, call): `call` is one kernel call only, `before` what it needs (the forward that
    makes the cache of a backward), run outside the measured window."""
    layer = fastrnn.LSTM(4, 128, dtype=np.float32, rng=0)
    x = np.random.default_rng(0).standard_normal((3000, 1, 4)).astype(np.float32)
    layer.train(what != "inference")
    if what == "backward":
        g = np.ones((3000, 1, 128), np.float32)
        return (lambda: layer(x)), (lambda: layer.backward(g))
    return None, (lambda: layer(x))


@pytest.mark.parametrize("what", ["inference", "training forward", "backward"])
def test_gil_released_in_kernels(what):
    before, call = _kernel_call(what)
    assert _progress_while(call, before=before), f"no other Python thread ran during a {what} kernel call"


def _hold_gil(*args, **kwargs):
    """A stand-in kernel that keeps the GIL for 0.3 s (a pure-Python busy loop)."""
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:
        pass


def test_gil_held_is_detected():
    """The detector above fails when the GIL is not released (a pure-Python busy loop)."""
    assert not _progress_while(_hold_gil, attempts=2)


@pytest.mark.parametrize("what,kernel", [("inference", "forward"), ("training forward", "forward"),
                                         ("backward", "backward")])
def test_gil_held_in_a_kernel_is_detected(monkeypatch, what, kernel):
    """Each case of test_gil_released_in_kernels fails when that kernel keeps the GIL: with the
    plan's forward / backward (_C.Plan) replaced by a stand-in that holds it, no other thread runs
    (the backward case measures the backward alone, so its forward's GIL release cannot count)."""
    before, call = _kernel_call(what)
    monkeypatch.setattr(fastrnn._C.Plan, kernel, _hold_gil)
    assert not _progress_while(lambda: _swallow(call), attempts=2, before=before)


def _swallow(fn):
    """Calls fn; the stand-in kernel computes nothing, so what follows it may raise."""
    try:
        fn()
    except Exception:  # noqa: BLE001 - only whether the GIL was released matters here
        pass


CASES = [("lstm", 1), ("gru", 2), ("gru_v1", 1), ("rnn_relu", 2), ("rnn_tanh", 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concurrent_inference_equals_sequential(two_threads, dtype):
    """Different layers and one shared layer in eval mode, called from 4 Python threads at once."""
    rng = np.random.default_rng(1)
    layers = [make_layer(cell, 6, 37, dtype=dtype, seed=i, num_layers=2, bidirectional=D == 2).eval()
              for i, (cell, D) in enumerate(CASES)]
    xs = [rng.standard_normal((40, 5, 6)).astype(dtype) for _ in range(8)]
    jobs = [(li, xi) for li in range(len(layers)) for xi in range(len(xs))]
    expected = {job: layers[job[0]](xs[job[1]]) for job in jobs}
    shared = layers[0]
    expected.update({("shared", xi): shared(xs[xi]) for xi in range(len(xs))})
    results, errors = {}, []

    def run(my_jobs):
        try:
            for job in my_jobs:
                layer = shared if job[0] == "shared" else layers[job[0]]
                for _ in range(3):
                    results.setdefault(job, []).append(layer(xs[job[1]]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    all_jobs = jobs + [("shared", xi) for xi in range(len(xs))] * 2
    threads = [threading.Thread(target=run, args=(all_jobs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for job, outs in results.items():
        want_out, want_state = expected[job]
        for out, state in outs:
            np.testing.assert_array_equal(out, want_out)
            for a, b in zip(state if isinstance(state, tuple) else (state,),
                            want_state if isinstance(want_state, tuple) else (want_state,)):
                np.testing.assert_array_equal(a, b)


def test_concurrent_training_of_separate_layers_equals_sequential(two_threads):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 4, 5)).astype(np.float32)
    g = rng.standard_normal((30, 4, 2 * 19)).astype(np.float32)

    def step(layer):
        layer.zero_grad()
        out, _ = layer(x)
        grad_x = layer.backward(g)[0]
        return out, grad_x, {k: v.copy() for k, v in layer.grads.items()}

    cells = ["lstm", "gru", "gru_v1", "rnn_tanh"]
    want = [step(make_layer(c, 5, 19, dtype=np.float32, seed=3, bidirectional=True, num_layers=2))
            for c in cells]
    got = [None] * len(cells)

    def run(i):
        layer = make_layer(cells[i], 5, 19, dtype=np.float32, seed=3, bidirectional=True, num_layers=2)
        for _ in range(5):
            got[i] = step(layer)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cells))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (out, gx, grads), (out2, gx2, grads2) in zip(want, got):
        np.testing.assert_array_equal(out, out2)
        np.testing.assert_array_equal(gx, gx2)
        for k in grads:
            np.testing.assert_array_equal(grads[k], grads2[k])


def _blocked_inside(monkeypatch, name):
    """Patch F.<name> so that the next call blocks until released; returns (entered, release)."""
    real = getattr(F, name)
    entered, release = threading.Event(), threading.Event()

    def blocking(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, name, blocking)
    return entered, release


@pytest.mark.parametrize("first,second", [("forward", "forward"), ("forward", "backward"),
                                          ("backward", "backward"), ("backward", "forward")])
def test_training_from_two_threads_at_once_raises(monkeypatch, first, second):
    layer = fastrnn.GRU(3, 5, rng=0)
    x = np.ones((4, 2, 3), np.float32)
    g = np.ones((4, 2, 5), np.float32)
    layer(x)  # a cache, for the second call when it is a backward
    entered, release = _blocked_inside(monkeypatch, "_forward" if first == "forward" else "backward")
    errors = []

    def first_call():  # holds the layer (blocked inside the kernel wrapper) until released
        try:
            if first == "backward":
                layer(x)
            layer(x) if first == "forward" else layer.backward(g)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=first_call)
    t.start()
    assert entered.wait(30)
    try:
        with pytest.raises(RuntimeError, match="layer is being used by another thread"):
            layer(x) if second == "forward" else layer.backward(g)
    finally:
        release.set()
        t.join()
    assert not errors  # the call that owned the layer completed normally
    assert layer._user is None


def test_backward_of_another_threads_forward_raises():
    """A forward on thread A, then one on B, then A's backward would silently use B's cache."""
    layer = fastrnn.LSTM(3, 4, rng=0)
    x_a, x_b = np.ones((5, 2, 3), np.float32), np.zeros((5, 2, 3), np.float32)
    g = np.ones((5, 2, 4), np.float32)
    a_forward, b_done, errors = threading.Event(), threading.Event(), []

    def thread_a():
        layer(x_a)
        a_forward.set()
        b_done.wait(30)
        try:
            layer.backward(g)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=thread_a)
    t.start()
    a_forward.wait(30)
    layer(x_b)  # thread B (this one) replaces the cache
    b_done.set()
    t.join()
    assert len(errors) == 1 and "layer is being used by another thread" in str(errors[0])
    # B's own backward is still fine and equals a clean single-thread run.
    grads_b = layer.backward(g)
    clean = fastrnn.LSTM(3, 4, rng=0)
    clean(x_b)
    for a, b in zip(grads_b, clean.backward(g)):
        np.testing.assert_array_equal(a, b)


def test_eval_forward_while_training_does_not_corrupt():
    """Inference of an eval-mode twin runs concurrently with training of the original."""
    layer = fastrnn.LSTM(3, 16, rng=0)
    x = np.random.default_rng(0).standard_normal((50, 3, 3)).astype(np.float32)
    twin = fastrnn.LSTM(3, 16, rng=0).eval()
    want = twin(x)[0]
    stop, outs = threading.Event(), []

    def infer():
        while not stop.is_set():
            outs.append(twin(x)[0])

    t = threading.Thread(target=infer)
    t.start()
    try:
        for _ in range(20):
            out, _ = layer(x)
            layer.backward(np.ones_like(out))
    finally:
        stop.set()
        t.join()
    assert outs
    for o in outs:
        np.testing.assert_array_equal(o, want)


def _cxx():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(_cxx() is None, reason="no C++ compiler to build the pool stress test")
def test_thread_pool_runs_every_job_exactly_once(tmp_path):
    """Regression: jobs of growing width made a late worker run a job twice (hang / early return)."""
    exe = tmp_path / "pool_stress"
    root = os.path.dirname(HERE)
    subprocess.run([_cxx(), "-O2", "-std=c++17", "-pthread", "-I", os.path.join(root, "csrc"),
                    os.path.join(HERE, "cpp", "pool_stress.cpp"), os.path.join(root, "csrc", "core", "threads.cpp"),
                    "-o", str(exe)], check=True, capture_output=True)
    try:
        res = subprocess.run([str(exe), "4000"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the thread pool hung (a job never finished)")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 of 4000 jobs incorrect" in res.stdout



# ---- the planner ---------------------------------------------------------------------------------

@pytest.mark.parametrize("T,H,cell,want", [(200, 96, "lstm", 2), (100, 128, "lstm", 2), (200, 96, "gru", 2),
                                           (40, 128, "lstm", 1), (8, 96, "lstm", 1), (8, 256, "lstm", 2)])
def test_a_direction_is_split_where_its_steps_pay(T, H, cell, want):
    """A direction's units go to 2 threads when a step has enough flops per thread for its
    barrier and the call enough steps to share the threads' wake-up: 1.2e5 up to T = 33, then
    4e6 / T down to 2.5e4 (an LSTM step at N = 1, H = 96 has 7.4e4 flops, at H = 128 1.3e5)."""
    layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(H, H, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((T, 1, H)).astype(np.float32)
    previous, backoff = fastrnn.get_num_threads(), fastrnn._C._set_thread_backoff(False)
    try:
        fastrnn.set_num_threads(2)
        fastrnn._C._record_regions(True)
        layer(x)
        regions = fastrnn._C._record_regions(False)
        assert [r[1] for r in regions if r[0] == "recurrence"] == [want], regions
    finally:
        fastrnn.set_num_threads(previous)
        fastrnn._C._set_thread_backoff(backoff)


# ---- the back-off to one thread -------------------------------------------------------------------

@pytest.fixture
def backoff_on():
    """Two threads with the back-off on and its window empty; restored after."""
    previous, was = fastrnn.get_num_threads(), fastrnn._C._set_thread_backoff(True)
    fastrnn.set_num_threads(2)
    yield
    fastrnn._C._set_thread_backoff(was)
    fastrnn.set_num_threads(previous)


def test_one_slow_short_region_does_not_back_off(backoff_on):
    """A streaming step lasts microseconds: one interrupt in one of them (here 60 % of a 20 us
    region spent waiting) must not send the next second of steps to one thread."""
    fastrnn._C._report_waits(24_000, 20_000, 2)
    assert fastrnn._C._step_threads() == 2
    for _ in range(40):  # light steps after it: the window's share stays low
        fastrnn._C._report_waits(1_000, 20_000, 2)
    assert fastrnn._C._step_threads() == 2


def test_sustained_waiting_backs_off(backoff_on):
    """Heavy waiting in every short region (threads descheduled: more threads than cores) sends
    the steps to one thread once two windows of a millisecond in a row have been seen."""
    for _ in range(99):
        fastrnn._C._report_waits(20_000, 20_000, 2)  # half of each thread's time waiting
    assert fastrnn._C._step_threads() == 2  # one window contended, the second not judged yet
    fastrnn._C._report_waits(20_000, 20_000, 2)
    assert fastrnn._C._step_threads() == 1
    assert fastrnn._C._wait_stats()[3] >= 1


def test_one_stalled_window_does_not_back_off(backoff_on):
    """A VM's host takes a vCPU away for a few milliseconds: one window of short regions is
    contended, the next ones are not. The steps stay on two threads (before, this sent the next
    second to one thread, every few seconds on a 2-vCPU VM)."""
    for _ in range(50):
        fastrnn._C._report_waits(20_000, 20_000, 2)
    for _ in range(50):
        fastrnn._C._report_waits(1_000, 20_000, 2)
    for _ in range(50):
        fastrnn._C._report_waits(20_000, 20_000, 2)
    assert fastrnn._C._step_threads() == 2


def test_short_waits_of_short_steps_do_not_back_off(backoff_on):
    """Steps of a few microseconds on idle cores: a third of the time goes to waits of under a
    microsecond each (barrier round trip, skew). That is the planner's cost to weigh, not a sign
    of descheduled threads: no back-off."""
    for _ in range(60):  # 1.2 ms of regions: 20 us each, 10 barrier passes per thread, 14 us waited
        fastrnn._C._report_waits(14_000, 20_000, 2, 10)
    assert fastrnn._C._step_threads() == 2
    for _ in range(60):  # the same with 100 us waits: threads lose time slices
        fastrnn._C._report_waits(2_000_000, 1_200_000, 2, 10)
    assert fastrnn._C._step_threads() == 1


def test_long_slow_regions_back_off_at_the_second(backoff_on):
    """A region closes one window however long it is (a host's stall inside it makes it long):
    one slow long region keeps two threads, the second in a row backs off."""
    fastrnn._C._report_waits(6_000_000, 5_000_000, 2)
    assert fastrnn._C._step_threads() == 2
    fastrnn._C._report_waits(6_000_000, 5_000_000, 2)
    assert fastrnn._C._step_threads() == 1


def test_barrier_cost_is_measured():
    ns = fastrnn._C._barrier_ns(2, 200)
    assert 0 < ns < 1e8
    assert fastrnn._C._barrier_ns(1, 200) == 0


def test_import_starts_no_blas_threads():
    """fastrnn calls its BLAS (scipy-openblas32) on one thread per part, so that library must
    not start its own server threads when it loads: they spin ~0.1 s on the cores the first
    multi-threaded steps need (a first 2-thread call was 4-6x slower and sent the steps to one
    thread). The environment the user set is left as it was."""
    code = ("import os, numpy\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "import fastrnn\n"
            "after = len(os.listdir('/proc/self/task'))\n"
            "print(before, after, os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc (Linux)")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    before, after, var = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                        check=True).stdout.split()
    assert after == before and var == "None", (before, after, var)
    env["OPENBLAS_NUM_THREADS"] = "3"  # the user's setting (for NumPy's BLAS) survives the import
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.split()[2] == "3"
