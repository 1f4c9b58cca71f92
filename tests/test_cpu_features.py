"""Code built for an ISA runs only on CPUs that have it.

The kernels of each ISA are compiled with target pragmas into one library; nothing of the
AVX-512 (or AVX2) path may execute before that ISA is selected, or fastrnn dies with SIGILL on
CPUs without it. Valgrind's virtual CPU reports AVX2 but not AVX-512 (and traps on AVX-512
instructions), so running fastrnn under it emulates such a CPU.
"""
import os
import platform
import shutil
import subprocess
import sys

import pytest

import fastrnn

CODE = """
import numpy as np, fastrnn
isas = fastrnn.available_isas()
for isa in isas:
    fastrnn.set_isa(isa)
    for layer in (fastrnn.LSTM(3, 5, bidirectional=True, rng=0), fastrnn.GRU(3, 5, dtype=np.float64, rng=0),
                  fastrnn.RNN(3, 5, rng=0), fastrnn.LayerNormLSTM(3, 5, rng=0)):
        x = np.ones((4, 2, 3), layer.dtype)
        out = layer(x)[0]
        layer.backward(np.ones_like(out))
print("ran on", ",".join(isas))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 ISAs")
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind emulates a CPU without AVX-512")
def test_runs_on_a_cpu_without_avx512(tmp_path):
    """Regression: the AVX-512 kernel set was built (with zmm moves) on the first call, whatever
    the ISA: SIGILL on AVX2-only CPUs."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    env.pop("FASTRNN_ISA", None)
    res = subprocess.run(["valgrind", "-q", "--tool=none", sys.executable, "-c", CODE], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ran on" in res.stdout and "avx512" not in res.stdout  # the emulated CPU really lacks it
