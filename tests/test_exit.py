"""Exit: processes that use fastrnn on 2 threads, with a daemon thread inside fastrnn calls, exit
normally with status 0 (tests/exit_worker.py has the scenarios and the mechanism).

A daemon thread returning from a kernel while the interpreter exits is ended by CPython with
pthread_exit; fastrnn used to take the GIL back in a noexcept destructor (pybind11's
gil_scoped_release), where that unwinding aborts: every scenario aborted in about one exit of two
("terminate called without an active exception"). fastrnn's thread pool is not involved: it is
created once and never destroyed, so no joinable std::thread of it is ever destroyed.

The default run starts 18 processes; FASTRNN_EXIT_STRESS=k runs k times as many (.ci/run: k = 12,
216 processes).
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exit_worker.py")
SCALE = int(os.environ.get("FASTRNN_EXIT_STRESS", "1"))
SANITIZED = any(k in os.environ for k in ("ASAN_OPTIONS", "FASTRNN_SANITIZE"))


def _needs_torch(scenario):
    if scenario.startswith("torch"):
        pytest.importorskip("torch")


@pytest.mark.skipif(SANITIZED, reason="the exception scenario sets an address-space limit, which ASan cannot run under")
@pytest.mark.parametrize("scenario,runs", [("plain", 8), ("torch", 1), ("torch_omp", 1), ("exception", 8)])
def test_processes_exit_normally_while_a_thread_is_inside_fastrnn(scenario, runs):
    _needs_torch(scenario)

    def run(_):
        r = subprocess.run([sys.executable, WORKER, scenario], capture_output=True, text=True, timeout=300)
        return r.returncode, r.stderr.strip().splitlines()[-3:]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(runs * SCALE)))
    failed = [r for r in results if r[0] != 0]
    assert not failed, f"{len(failed)} of {len(results)} '{scenario}' processes did not exit with 0: {failed[:3]}"
