"""The optional CUDA backend (csrc/cuda, fastrnn.cuda, device="cuda", fastrnn.torch on CUDA tensors).

Three kinds of test:
- build and availability: nvcc compiles csrc/cuda (skipped without nvcc), setup.py's FASTRNN_CUDA
  modes, clear errors where the backend cannot be used;
- the whole CUDA code path (kernels, driver, pybind11 layer, front ends) on the host emulator
  (backend "emulator": csrc/cuda compiled by the host compiler, see tests/cuda_emulator.py), which
  runs here;
- the same tests on a GPU (backend "gpu"), skipped with "needs a CUDA GPU" elsewhere, plus the
  benchmark against torch/cuDNN.
"""
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import cuda_emulator
import fastrnn
from fastrnn import functional as F
from test_core import OPTIONS
from util import CELLS, TOL, assert_close_all, make_layer, run_both

REPO = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
GPU = fastrnn.cuda.is_available() and fastrnn.cuda.info()["backend"] == "cuda"
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
DTYPES = [np.float64, np.float32]


# ---------------------------------------------------------------- backends

@pytest.fixture(scope="session")
def emulator():
    if cuda_emulator.compiler() is None:
        pytest.skip("no C++ compiler to build the CUDA host emulator")
    return cuda_emulator.load()


def use_backend(monkeypatch, module):
    """Make fastrnn.cuda use `module` (None: as if fastrnn._cuda had not been built)."""
    monkeypatch.setattr(fastrnn.cuda, "_backend", module)
    monkeypatch.setattr(fastrnn.cuda, "_loaded", True)
    monkeypatch.setattr(fastrnn.cuda, "_status", None)


@pytest.fixture
def backend(request, monkeypatch):
    """"emulator": the CUDA code on the host emulator; "gpu": the built backend on a GPU."""
    if request.param == "gpu":
        if not GPU:
            pytest.skip("needs a CUDA GPU")
    else:
        use_backend(monkeypatch, request.getfixturevalue("emulator"))
    return request.param


@pytest.fixture(params=["0", "1"], ids=["per-step", "persistent"])
def kernels(request, monkeypatch):
    """The recurrent kernels: one launch per step, or the persistent kernel wherever it fits."""
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", request.param)
    return request.param


BACKENDS = pytest.mark.parametrize("backend", ["emulator", "gpu"], indirect=True)


# ---------------------------------------------------------------- build

def test_cuda_sources_compile_with_nvcc(tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found")
    flags = ["-std=c++17", "-O1", "-Xcompiler", "-fPIC", f"-I{REPO / 'csrc'}", "-gencode=arch=compute_80,code=sm_80"]

    def nvcc(src):
        return subprocess.run([NVCC, "-c", str(src), "-o", str(tmp_path / (src.name + ".o")), *flags],
                              capture_output=True, text=True)
    sources = sorted((REPO / "csrc" / "cuda").glob("*.cu"))
    assert {s.name for s in sources} == {"driver_f32.cu", "driver_f64.cu", "runtime.cu"}
    with ThreadPoolExecutor(2) as pool:
        for src, r in zip(sources, pool.map(nvcc, sources)):
            assert r.returncode == 0, f"nvcc -c {src.name} failed:\n{r.stdout}{r.stderr}"
            assert (tmp_path / (src.name + ".o")).stat().st_size > 0


# setup.py run with setuptools.setup captured: its extension list and its CUDA steps, without
# building the core. Prints a JSON line.
SETUP_PROBE = r"""
import json, os, sys, runpy, setuptools
from setuptools.dist import Distribution
captured = {}
setuptools.setup = lambda **kw: captured.update(kw)
os.chdir(sys.argv[1])
ns = runpy.run_path("setup.py")
out = {"extensions": [e.name for e in captured["ext_modules"]]}
if sys.argv[2] == "build":
    cmd = ns["BuildExt"](Distribution())
    cmd.initialize_options(); cmd.finalize_options()
    cmd.build_temp = sys.argv[3]
    try:
        out["built"] = cmd.build_cuda(ns["cuda"])
    except RuntimeError as exc:
        out["error"] = str(exc)
elif sys.argv[2] == "flags":
    try:
        out["flags"] = ns["nvcc_flags"]()
    except RuntimeError as exc:
        out["error"] = str(exc)
print(json.dumps(out))
"""


def run_setup_probe(tmp_path, what, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("FASTRNN_CUDA", "FASTRNN_CUDA_ARCHS", "CUDA_HOME",
                                                             "CUDA_PATH")}
    full.update(env)
    r = subprocess.run([sys.executable, "-c", SETUP_PROBE, str(REPO), what, str(tmp_path)], capture_output=True,
                       text=True, env=full, timeout=120)
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None)


def fake_nvcc(tmp_path, body):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvcc").write_text("#!/bin/sh\n" + body + "\n")
    (bindir / "nvcc").chmod(0o755)
    return str(bindir)


def test_setup_cuda_off_has_no_cuda_extension(tmp_path):
    r, out = run_setup_probe(tmp_path, "list", FASTRNN_CUDA="0")
    assert out["extensions"] == ["fastrnn.lib.libfastrnn", "fastrnn._C"], r.stderr
    r, out = run_setup_probe(tmp_path, "list")  # auto
    assert out["extensions"] == ["fastrnn.lib.libfastrnn", "fastrnn._C", "fastrnn._cuda"], r.stderr


def test_setup_rejects_unknown_modes_and_archs(tmp_path):
    r, _ = run_setup_probe(tmp_path, "list", FASTRNN_CUDA="yes")
    assert r.returncode != 0 and "FASTRNN_CUDA='yes': expected auto, 0 or 1" in r.stderr
    _, out = run_setup_probe(tmp_path, "flags", FASTRNN_CUDA_ARCHS="sm_80")
    assert "FASTRNN_CUDA_ARCHS='sm_80': expected numbers like '80;90'" in out["error"]
    _, out = run_setup_probe(tmp_path, "flags")
    assert [f for f in out["flags"] if f.startswith("-gencode")] == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    _, out = run_setup_probe(tmp_path, "flags", FASTRNN_CUDA_ARCHS="75, 86")
    assert [f for f in out["flags"] if f.startswith("-gencode")] == [
        "-gencode=arch=compute_75,code=sm_75", "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_86,code=compute_86"]


@pytest.mark.parametrize("nvcc", ["missing", "broken"])
def test_setup_auto_warns_and_mode_1_fails_without_working_nvcc(tmp_path, nvcc):
    path = "/usr/bin:/bin" if nvcc == "missing" else fake_nvcc(tmp_path, "echo 'nvcc: broken toolkit' >&2; exit 1")
    path += os.pathsep + os.path.dirname(sys.executable)
    want = "nvcc not found" if nvcc == "missing" else "nvcc: broken toolkit"
    r, out = run_setup_probe(tmp_path, "build", PATH=path, FASTRNN_CUDA="auto")
    assert out["built"] is False
    assert "WARNING: building fastrnn without the CUDA backend (FASTRNN_CUDA=auto)" in r.stderr and want in r.stderr
    r, out = run_setup_probe(tmp_path, "build", PATH=path, FASTRNN_CUDA="1")
    assert out["error"].startswith("FASTRNN_CUDA=1 but the CUDA backend cannot be built") and want in out["error"]


def test_import_fastrnn_does_not_load_cuda():
    code = ("import sys, fastrnn; assert 'fastrnn._cuda' not in sys.modules; assert 'torch' not in sys.modules; "
            "fastrnn.cuda.reason(); print('fastrnn._cuda' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(fastrnn.cuda.info()["built"])


# ---------------------------------------------------------------- availability and errors

@pytest.mark.skipif(GPU, reason="a GPU is usable here")
def test_unusable_backend_says_why():
    assert fastrnn.cuda.is_available() is False
    why = fastrnn.cuda.reason()
    assert isinstance(why, str) and len(why) > 20
    assert fastrnn.cuda.device_count() == 0
    info = fastrnn.cuda.info()
    assert info["reason"] == why and info["devices"] == []
    if info["built"]:  # built here, but no driver or no device
        assert why.startswith("no usable CUDA device: ")
    else:
        assert "built without its CUDA backend" in why
    with pytest.raises(RuntimeError, match=r"LSTM: device='cuda' needs fastrnn's CUDA backend, which cannot be "
                                           r"used here: " + why[:20]):
        fastrnn.LSTM(3, 4, device="cuda")


def test_not_built_backend_errors(monkeypatch):
    use_backend(monkeypatch, None)
    assert not fastrnn.cuda.is_available() and fastrnn.cuda.device_count() == 0
    assert "fastrnn was built without its CUDA backend" in fastrnn.cuda.reason()
    assert fastrnn.cuda.info()["built"] is False
    layer = fastrnn.GRU(3, 4)
    for call in (lambda: fastrnn.GRU(3, 4, device="cuda"),
                 lambda: F.gru_forward(np.zeros((2, 1, 3), np.float32), layer.params, device="cuda"),
                 lambda: fastrnn.cuda.empty((2, 2), np.float32)):
        with pytest.raises(RuntimeError, match="built without its CUDA backend"):
            call()


class NoDevice:
    """A backend whose runtime finds no GPU (what fastrnn._cuda reports without a driver)."""

    @staticmethod
    def device_count():
        return 0, "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (CUDA driver version is insufficient)"

    @staticmethod
    def backend():
        return "cuda"

    runtime_version = driver_version = staticmethod(lambda: 0)


def test_no_device_errors_name_the_runtime_error(monkeypatch):
    use_backend(monkeypatch, NoDevice)
    assert fastrnn.cuda.reason() == ("no usable CUDA device: cudaGetDeviceCount failed: cudaErrorInsufficientDriver "
                                     "(CUDA driver version is insufficient)")
    assert fastrnn.cuda.info()["built"] is True
    with pytest.raises(RuntimeError, match=r"RNN: device='cuda' needs .* cudaErrorInsufficientDriver"):
        fastrnn.RNN(3, 4, device="cuda")


def test_device_argument_is_checked():
    with pytest.raises(ValueError, match=r"LSTM: unknown device 'gpu'; expected 'cpu' or 'cuda'"):
        fastrnn.LSTM(3, 4, device="gpu")
    with pytest.raises(TypeError, match=r"GRU: device must be a str \('cpu' or 'cuda'\), got int"):
        fastrnn.GRU(3, 4, device=0)
    with pytest.raises(ValueError, match=r"lstm_forward: unknown device 'cuda:1'"):
        F.lstm_forward(np.zeros((2, 1, 3), np.float32), fastrnn.LSTM(3, 4).params, device="cuda:1")
    assert "device" not in repr(fastrnn.LSTM(3, 4))


class HostCudaArray:
    """Host memory exposed through ``__cuda_array_interface__``: what CuPy arrays look like to
    fastrnn. On the emulator, host memory is device memory, so these stand in for CuPy arrays.
    `stream`: the interface's stream field (None: no pending work)."""

    def __init__(self, a, stream=None):
        self.a = a
        self.stream = stream

    @property
    def __cuda_array_interface__(self):
        a = self.a
        return dict(shape=a.shape, typestr=a.dtype.str, data=(a.ctypes.data, False), version=3,
                    strides=None if a.flags.c_contiguous else a.strides, stream=self.stream)


class Recording:
    """A backend module whose device and stream calls are recorded (the rest is the module's)."""

    def __init__(self, module):
        self._module = module
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._module, name)

    def synchronize(self, stream):
        self.calls.append(("synchronize", stream))
        self._module.synchronize(stream)

    def set_device(self, index):
        self.calls.append(("set_device", index))
        self._module.set_device(index)

    def forward(self, *args):
        self.calls.append(("forward on device", self._module.get_device()))
        self._module.forward(*args)

    def backward(self, *args):
        self.calls.append(("backward on device", self._module.get_device()))
        self._module.backward(*args)


def test_gpu_arrays_into_cpu_layers_raise():
    layer = fastrnn.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"LSTM.forward: x is an array in GPU memory \(HostCudaArray\); use "
                                        r"device='cuda' or copy it to the host first"):
        layer(HostCudaArray(np.zeros((2, 1, 3), np.float32)))


# ---------------------------------------------------------------- correctness (emulator and GPU)

def size_cases():
    for backend in ("emulator", "gpu"):
        # The emulator runs every CUDA thread on the CPU: sizes that cover one and several unit
        # tiles (32 units), row tiles (8 rows) and product chunks (32 deep). The GPU runs test_core's.
        Hs = [1, 9, 33, 64] if backend == "emulator" else [1, 7, 8, 9, 19, 64]
        TNs = [(1, 1), (3, 2), (6, 9), (37, 16)] if backend == "emulator" else [(1, 1), (2, 3), (37, 16), (37, 1)]
        for H in Hs:
            for T, N in TNs:
                yield pytest.param(backend, H, T, N, id=f"{backend}-H{H}-T{T}-N{N}")


@pytest.mark.parametrize("backend,H,T,N", list(size_cases()), indirect=["backend"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_sizes_match_reference(backend, kernels, cell, dtype, H, T, N):
    rng = np.random.default_rng(H * 1000 + T * 10 + N)
    C = 5
    layer = make_layer(cell, C, H, dtype=dtype, seed=H, device="cuda")
    x = rng.standard_normal((T, N, C)).astype(dtype)
    mine, theirs = run_both(layer, x)
    assert_close_all(mine, theirs, TOL[dtype])


@BACKENDS
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_match_reference(backend, kernels, cell, dtype, option):
    """test_core.test_options_match_reference with device="cuda"."""
    spec = OPTIONS[option]
    rng = np.random.default_rng(len(option))
    T, N, C, H = 9, 4, 6, 8
    layer = make_layer(cell, C, H, dtype=dtype, seed=11, device="cuda", **spec["kw"])
    L, D = layer.num_layers, layer.num_directions
    if spec.get("unbatched"):
        x = rng.standard_normal((T, C))
        state_shape = (L * D, H)
    else:
        x = rng.standard_normal((N, T, C) if layer.batch_first else (T, N, C))
        state_shape = (L * D, N, H)
    x = x.astype(dtype)
    hx = None
    if spec.get("hx"):
        h0 = rng.standard_normal(state_shape).astype(dtype)
        hx = (h0, rng.standard_normal(state_shape).astype(dtype)) if cell == "lstm" else h0
    lengths = np.array(spec["lengths"]) if "lengths" in spec else None
    mine, theirs = run_both(layer, x, hx, lengths, rng_dropout=spec.get("dropout_seed"))
    assert_close_all(mine, theirs, TOL[dtype])
    if lengths is not None:  # outputs past each length are exactly zero
        out = mine["out"] if not layer.batch_first else mine["out"].swapaxes(0, 1)
        for n, ln in enumerate(lengths):
            assert not out[ln:, n].any()


def forward_both(cell, dtype, *, T=7, N=5, C=4, H=6, L=2, D=2, lengths=None, dropout=0.0, bias=True, seed=0):
    """The same training forward on the CPU and on the CUDA backend: (cpu ctx, cuda ctx, outputs)."""
    kind, extra = CELLS[cell]
    layer = make_layer(cell, C, H, dtype=dtype, seed=seed, num_layers=L, bidirectional=D == 2, dropout=dropout,
                       bias=bias)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    h0 = rng.standard_normal((L * D, N, H)).astype(dtype)
    hx = (h0, rng.standard_normal((L * D, N, H)).astype(dtype)) if kind == "lstm" else h0
    run = {"rnn": F.rnn_forward, "lstm": F.lstm_forward, "gru": F.gru_forward}[kind]
    kw = dict(num_layers=L, bidirectional=D == 2, dropout=dropout, bias=bias, training=True, rng=3, **extra)
    cpu = run(x, layer.params, hx, lengths, **kw)
    gpu = run(x, layer.params, hx, lengths, device="cuda", **kw)
    return cpu, gpu


@BACKENDS
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_cache_records_and_gradients_match_cpu_core(backend, kernels, cell, dtype):
    """Same cache layout and contents as the CPU core (read back element by element), same
    gradients with BPTT clipping and retain, same per-step diagnostics records."""
    tol = TOL[dtype]
    cpu, gpu = forward_both(cell, dtype, lengths=[7, 2, 5, 1, 7], dropout=0.3)
    for a, b in zip(cpu[:-1], gpu[:-1]):  # outputs and states
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_allclose(v, u, rtol=tol, atol=tol)
    ctx_c, ctx_g = cpu[-1], gpu[-1]
    assert ctx_g.device == "cuda" and isinstance(ctx_g.cache, fastrnn.cuda.DeviceArray)
    np.testing.assert_allclose(ctx_g.cache.get(), ctx_c.cache, rtol=tol, atol=tol)
    sat_c, first_c = F.forward_stats(ctx_c)
    sat_g, first_g = F.forward_stats(ctx_g)
    np.testing.assert_array_equal(np.isnan(sat_g), np.isnan(sat_c))
    if dtype == np.float64:  # in float32 a gate at a saturation threshold may land on either side
        np.testing.assert_allclose(sat_g, sat_c, atol=1e-12)
    assert first_c is None and first_g is None
    rng = np.random.default_rng(1)
    go = rng.standard_normal((7, 5, 12)).astype(dtype)
    gh = rng.standard_normal((4, 5, 6)).astype(dtype)
    gc = rng.standard_normal((4, 5, 6)).astype(dtype) if cell == "lstm" else None
    for retain in (True, False):
        res_c = F.backward(ctx_c, go, gh, gc, retain=True, bptt_clip=0.2, record=True)
        res_g = F.backward(ctx_g, go, gh, gc, retain=retain, bptt_clip=0.2, record=True)
        for a, b in zip(res_c[:3], res_g[:3]):
            if a is not None:
                np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
        for name in res_c[3]:
            np.testing.assert_allclose(res_g[3][name], res_c[3][name], rtol=tol, atol=tol, err_msg=name)
        for what in ("grad_h_norm", "grad_c_norm", "propagation"):
            a, b = getattr(ctx_c, what), getattr(ctx_g, what)
            if a is None:
                assert b is None
            else:
                np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-12, err_msg=what)
    assert ctx_g.consumed and ctx_g.cache is None
    with pytest.raises(RuntimeError, match="already used by an earlier backward"):
        F.backward(ctx_g, go)


@BACKENDS
def test_diagnostics_record_on_a_cuda_layer(backend, kernels):
    reports = []
    for device in ("cpu", "cuda"):
        layer = fastrnn.LSTM(3, 6, num_layers=2, dtype=np.float64, rng=0, device=device)
        x = np.random.default_rng(0).standard_normal((12, 4, 3))
        with fastrnn.diagnostics.record(layer) as rec:
            out, _ = layer(x)
            layer.backward(np.ones_like(out))
        reports.append(rec.report())
    cpu, gpu = reports
    assert gpu.verdict == cpu.verdict
    for what in ("grad_h_norm", "grad_c_norm", "propagation", "spectral_radius"):
        np.testing.assert_allclose(getattr(gpu, what), getattr(cpu, what), rtol=1e-9, err_msg=what)
    for gate in cpu.saturation:
        np.testing.assert_allclose(gpu.saturation[gate], cpu.saturation[gate], err_msg=gate)


@pytest.mark.parametrize("backend", ["emulator"], indirect=True)
@pytest.mark.parametrize("cell", list(CELLS))
def test_device_array_inputs_are_read_in_place(backend, cell):
    """Arrays in GPU memory (here host memory through __cuda_array_interface__, which the
    emulator treats as device memory) give the results of the same NumPy arrays, C-contiguous
    or not (batch_first views, transposes)."""
    rng = np.random.default_rng(4)
    kind = CELLS[cell][0]
    for batch_first in (False, True):
        layer = make_layer(cell, 3, 5, dtype=np.float32, num_layers=2, bidirectional=True, batch_first=batch_first,
                           device="cuda")
        xt = rng.standard_normal((6, 4, 3)).astype(np.float32)
        x = np.ascontiguousarray(xt.swapaxes(0, 1)) if batch_first else xt
        x_view = xt.swapaxes(0, 1) if batch_first else np.asfortranarray(xt)  # non-contiguous either way
        h0 = rng.standard_normal((4, 4, 5)).astype(np.float32)
        hx = (h0, h0 * 0.5) if kind == "lstm" else h0
        dev_hx = tuple(HostCudaArray(h) for h in hx) if kind == "lstm" else HostCudaArray(hx)
        g = rng.standard_normal((4, 6, 10) if batch_first else (6, 4, 10)).astype(np.float32)
        results = []
        for xx, hh, gg in ((x, hx, g), (HostCudaArray(x_view), dev_hx, HostCudaArray(np.asfortranarray(g)))):
            layer.zero_grad()
            out, state = layer(xx, hh)
            back = layer.backward(gg)
            results.append([out, *(state if kind == "lstm" else (state,)), *(b for b in back if b is not None),
                            *(v.copy() for v in layer.grads.values())])
        for a, b in zip(*results):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    x64 = HostCudaArray(np.zeros((6, 4, 3)))
    with pytest.raises(TypeError, match=r"forward: x has dtype float64, expected float32 \(the layer's dtype\)"):
        layer(x64)


@pytest.mark.parametrize("backend", ["emulator"], indirect=True)
def test_cell_variants_are_refused_clearly(backend):
    """The CUDA backend runs the plain cells; the variants and regularizers say so before any work."""
    x = np.zeros((4, 2, 3), np.float32)
    cases = [(fastrnn.LSTM(3, 4, proj_size=2, device="cuda"), "proj_size"),
             (fastrnn.LSTM(3, 4, peephole=True, device="cuda"), "peephole"),
             (fastrnn.LayerNormGRU(3, 4, device="cuda"), "layer_norm"),
             (fastrnn.GRU(3, 4, zoneout_h=0.1, device="cuda"), "zoneout_h"),
             (fastrnn.RNN(3, 4, recurrent_dropout=0.2, device="cuda"), "recurrent_dropout"),
             (fastrnn.LSTM(3, 4, weight_drop=0.3, device="cuda"), "weight_drop")]
    for layer, what in cases:
        with pytest.raises(NotImplementedError, match=rf"forward: device='cuda' runs the plain cells only; "
                                                      rf"{what} run on the CPU for now"):
            layer(x)
    with pytest.raises(NotImplementedError, match="peephole"):
        F.lstm_forward(x, fastrnn.LSTM(3, 4, peephole=True).params, peephole=True, device="cuda")


# ---------------------------------------------------------------- host-side pieces (emulator)

def plan_of(cell, C, H, L, D, dtype=np.float32):
    """The core's plan of a stack (what the CUDA module takes with each call)."""
    return F._config("gru" if cell == "gru_v1" else cell, C, H, L, D == 2, True, dtype, reset_after=cell != "gru_v1")


def test_workspace_is_exactly_what_the_driver_uses(emulator):
    """The workspace size functions and the driver carve the same regions: the driver never writes
    past the size it reported (canary bytes), and refuses a smaller workspace."""
    rng = np.random.default_rng(0)
    for cell in CELLS:
        for training in (True, False):
            T, N, C, H, L, D = 5, 3, 4, 7, 2, 2
            layer = make_layer(cell, C, H, dtype=np.float32, num_layers=L, bidirectional=True)
            plan = plan_of(cell, C, H, L, D)
            ptr = lambda a: 0 if a is None else a.ctypes.data  # noqa: E731 (host memory is device memory here)
            x = rng.standard_normal((T, N, C)).astype(np.float32)
            ws = [ptr(w) for w in layer.params.values()]
            out, h_n, c_n = (np.empty((T, N, D * H), np.float32), np.empty((L * D, N, H), np.float32),
                             np.empty((L * D, N, H), np.float32))
            cache = np.empty(plan.cache_size(T, N, False), np.float32) if training else None
            need = emulator.forward_workspace_bytes(plan, T, N, training)
            work = np.full(need + 4096, 0x5A, np.uint8)
            emulator.forward(plan, T, N, False, ptr(x), ws, 0, 0, 0, 0, ptr(out), ptr(h_n), ptr(c_n), ptr(cache),
                             ptr(work), need, 0)
            assert (work[need:] == 0x5A).all(), f"{cell}: forward wrote past its workspace"
            assert np.isfinite(out).all()
            with pytest.raises(ValueError, match=f"forward: workspace has {need - 1} bytes, needs {need}"):
                emulator.forward(plan, T, N, False, ptr(x), ws, 0, 0, 0, 0, ptr(out), ptr(h_n), ptr(c_n),
                                 ptr(cache), ptr(work), need - 1, 0)
            if not training:
                continue
            for retain, diag in ((False, False), (True, True)):
                need_b = emulator.backward_workspace_bytes(plan, T, N, retain, diag)
                work_b = np.full(need_b + 4096, 0x5A, np.uint8)
                gx, gh0, gc0, go, cache_b = (np.empty_like(x), np.empty_like(h_n), np.empty_like(h_n),
                                             np.ones_like(out), cache.copy())
                grads = [np.zeros_like(w) for w in layer.params.values()]  # kept alive: the kernels write them
                recs = [np.zeros((L, D, T)) for _ in range(4)]
                emulator.backward(plan, T, N, False, ptr(x), ws, 0, 0, ptr(cache_b), ptr(go), 0, 0, ptr(gx),
                                  ptr(gh0), ptr(gc0), [ptr(g) for g in grads], retain,
                                  0.0, *(ptr(r) if diag else 0 for r in recs), ptr(work_b), need_b, 0)
                assert (work_b[need_b:] == 0x5A).all(), f"{cell}: backward wrote past its workspace"
                assert np.isfinite(gx).all()


def test_the_cuda_driver_refuses_the_li_gru_cells(emulator):
    """Cells the CUDA kernels do not implement are refused by name, never run as another cell."""
    for cell in ("ligru", "sligru"):
        plan = F._config(cell, 4, 6, 1, False, True, np.float32, normalization="batchnorm")
        work = np.zeros(1 << 16, np.uint8)
        fake = [work.ctypes.data] * len(plan.parameters)  # refused before any is read
        with pytest.raises(ValueError, match=f"the CUDA backend runs the plain cells only|does not run {cell}"):
            emulator.forward(plan, 3, 2, False, work.ctypes.data, fake, 0, 0, 0, 0, work.ctypes.data,
                             work.ctypes.data, 0, 0, work.ctypes.data, work.nbytes, 0)


def test_workspace_grows_with_the_problem(emulator):
    f32, f64 = plan_of("lstm", 8, 16, 1, 1), plan_of("lstm", 8, 16, 1, 1, np.float64)
    f = emulator.forward_workspace_bytes
    assert f(f32, 10, 4, True) < f(f32, 10, 4, False)  # training: the projection lives in the cache
    assert f(f32, 10, 4, True) < f(f64, 10, 4, True)    # float64
    assert f(f32, 10, 4, False) < f(f32, 20, 4, False)
    b = emulator.backward_workspace_bytes
    assert b(f32, 10, 4, False, False) < b(f32, 10, 4, True, False) < b(f32, 10, 4, True, True)
    assert all(x % 256 == 0 for x in (f(f32, 10, 4, True), b(f64, 10, 4, True, True)))


def test_persistent_kernel_plan(emulator, monkeypatch):
    """The emulated device has 4 SMs with 96 KiB of shared memory each: the persistent kernel is
    used when asked for (1) or at small batch (auto) and only if its W_hh slices fit."""
    lstm = lambda N, H, D=1: (N, H, D)  # noqa: E731

    def plan(desc, fwd=True, diag=False, dbl=False):
        N, H, D = desc
        return emulator.uses_persistent(plan_of("lstm", 8, H, 1, D, np.float64 if dbl else np.float32), 10, N, fwd,
                                        diag)
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", "0")
    assert not plan(lstm(1, 16))
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", "1")
    assert plan(lstm(1, 16)) and plan(lstm(64, 16)) and plan(lstm(1, 16), fwd=False, diag=True)
    assert not plan(lstm(1, 200))            # a 4 x 200 x 32 float slice is 100 KiB: too big
    assert plan(lstm(1, 100))                # 50 KiB
    assert not plan(lstm(1, 100), dbl=True)  # 100 KiB in float64
    assert not plan(lstm(1, 64 * 8, D=1))    # 16 blocks x 256 KiB
    monkeypatch.delenv("FASTRNN_CUDA_PERSISTENT")
    assert plan(lstm(16, 16)) and not plan(lstm(17, 16))  # auto: small batches only


@pytest.mark.parametrize("backend", ["emulator"], indirect=True)
def test_device_array_views_and_copies(backend):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    d = fastrnn.cuda.to_device(a)
    assert (d.shape, d.dtype, d.ndim, d.size, d.nbytes) == ((2, 3, 4), np.float32, 3, 24, 96)
    assert d.is_c_contiguous and d.strides == a.strides
    np.testing.assert_array_equal(d.get(), a)
    t = d.swapaxes(0, 2)
    assert not t.is_c_contiguous and t.shape == (4, 3, 2)
    np.testing.assert_array_equal(t.get(), a.swapaxes(0, 2))
    np.testing.assert_array_equal(t.contiguous().get(), a.swapaxes(0, 2))
    np.testing.assert_array_equal(np.asarray(t, np.float64), a.swapaxes(0, 2))  # __array__: a host copy
    np.testing.assert_array_equal(d[1].get(), a[1])
    np.testing.assert_array_equal(d[:, None, :].get(), a[:, None, :])
    np.testing.assert_array_equal(d[-1, :, 2].get(), a[-1, :, 2])
    np.testing.assert_array_equal(d.reshape(6, 4).get(), a.reshape(6, 4))
    with pytest.raises(ValueError, match=r"cannot view \(4, 3, 2\) as \(24,\)"):
        t.reshape(24)
    with pytest.raises(IndexError, match="index 2 out of range for axis 0 of size 2"):
        d[2]
    with pytest.raises(IndexError, match="unsupported index"):
        d[0:1]
    ai = t.__cuda_array_interface__
    assert ai["shape"] == (4, 3, 2) and ai["typestr"] == "<f4" and ai["strides"] == t.strides and ai["version"] == 3
    back = fastrnn.cuda.DeviceArray.from_interface(HostCudaArray(a[:, ::2]))
    np.testing.assert_array_equal(back.get(), a[:, ::2])
    e = fastrnn.cuda.empty(0, np.float64)
    assert e.shape == (0,) and e.get().shape == (0,)


def test_from_interface_synchronizes_the_producers_stream(emulator, monkeypatch):
    """CUDA Array Interface v3: `stream` names the stream with pending work on the data; the
    consumer must synchronize it (fastrnn's own work runs on the default stream)."""
    rec = Recording(emulator)
    use_backend(monkeypatch, rec)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for stream in (1, 2, 0x7F00AB):  # legacy default, per-thread default, a cudaStream_t
        np.testing.assert_array_equal(fastrnn.cuda.DeviceArray.from_interface(HostCudaArray(a, stream)).get(), a)
    fastrnn.cuda.DeviceArray.from_interface(HostCudaArray(a))  # no stream: nothing to wait for
    assert [c for c in rec.calls if c[0] == "synchronize"] == [("synchronize", 1), ("synchronize", 2),
                                                                ("synchronize", 0x7F00AB)]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="stream must be None or a nonzero int"):
            fastrnn.cuda.DeviceArray.from_interface(HostCudaArray(a, bad))
    layer = fastrnn.GRU(3, 4, device="cuda")  # inputs of a layer call go through it too
    rec.calls.clear()
    layer(HostCudaArray(np.ones((5, 2, 3), np.float32), stream=7))
    assert ("synchronize", 7) in rec.calls


def _compile_emulated(tmp_path, name, *flags):
    """Builds tests/cpp/<name>.cpp with the emulator (csrc/cuda/emu.cpp); the executable's path."""
    cxx = cuda_emulator.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA host emulator")
    exe = tmp_path / name
    r = subprocess.run([cxx, "-std=c++17", "-O1", "-g", "-DFASTRNN_CUDA_EMULATE", f"-I{REPO / 'csrc'}", *flags,
                        str(REPO / "tests" / "cpp" / f"{name}.cpp"), str(REPO / "csrc" / "cuda" / "emu.cpp"),
                        "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def test_emulator_exposes_the_races_a_gpu_would(tmp_path):
    """Blocks of an ordinary launch in a shuffled order, threads interleaved at global loads and
    stores: a block reading another block's output of the same launch, and a missing barrier
    (write after read in shared memory), give wrong results; their correct versions never do."""
    r = subprocess.run([str(_compile_emulated(tmp_path, "emu_races"))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_device_properties_are_not_a_reference_into_a_growing_cache(tmp_path):
    """props() (csrc/cuda/driver_impl.cuh) caches per device; using a second device grows the
    cache. Under AddressSanitizer a reference into it would be a heap-use-after-free."""
    exe = _compile_emulated(tmp_path, "props_lifetime", "-fsanitize=address")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sms 4 4" in r.stdout, r.stdout + r.stderr


@pytest.fixture
def schedule(emulator):
    """The emulator's schedule setter (seed, refuse_cooperative); the default is restored after."""
    yield emulator._emu_set_schedule
    emulator._emu_set_schedule(int(os.environ.get("FASTRNN_CUDA_EMU_SEED", "1")), False)


def _train_on_cuda(cell, dtype=np.float64):
    """Outputs, cache and gradients of a training step on the CUDA backend (2 layers, both
    directions, lengths, dropout), as host arrays."""
    cpu, gpu = forward_both(cell, dtype, lengths=[7, 2, 5, 1, 7], dropout=0.3)
    ctx = gpu[-1]
    rng = np.random.default_rng(1)
    res = [gpu[0], *(gpu[1] if isinstance(gpu[1], tuple) else (gpu[1],)), ctx.cache.get()]
    back = F.backward(ctx, rng.standard_normal((7, 5, 12)).astype(dtype), record=True)
    res += [b for b in back[:3] if b is not None] + list(back[3].values()) + [ctx.grad_h_norm]
    return res, cpu


@pytest.mark.parametrize("backend", ["emulator"], indirect=True)
@pytest.mark.parametrize("cell", ["lstm", "gru_v1"])
def test_results_do_not_depend_on_the_emulators_schedule(backend, kernels, schedule, cell):
    """No atomics, sums in a fixed order: every block order and interleaving gives bitwise the
    same outputs, cache and gradients (a race between blocks or threads would not)."""
    results = []
    for seed in (0, 1, 2):
        schedule(seed)
        results.append(_train_on_cuda(cell)[0])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["emulator"], indirect=True)
@pytest.mark.parametrize("cell", list(CELLS))
def test_refused_cooperative_launch_falls_back_to_per_step_kernels(backend, schedule, monkeypatch, cell):
    """A GPU may refuse a cooperative launch (shared under MPS): nothing runs and the driver falls
    back to one launch per step, with the same results."""
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", "1")
    emu = fastrnn.cuda._backend
    assert emu.uses_persistent(plan_of(cell, 4, 6, 2, 2, np.float64), 7, 5, True, False)
    schedule(1)
    want, _ = _train_on_cuda(cell)
    assert emu._emu_refused_launches() == 0
    schedule(1, True)
    got, cpu = _train_on_cuda(cell)
    assert emu._emu_refused_launches() == 4  # forward and backward of each layer
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[0], cpu[0], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- fastrnn.torch on CUDA tensors

def torch_twins(ft, cell, dtype, **kw):
    import torch
    cls = {"rnn": ft.RNN, "lstm": ft.LSTM, "gru": ft.GRU}[CELLS[cell][0]]
    extra = dict(CELLS[cell][1])
    torch.manual_seed(0)
    return cls(4, 5, dtype=dtype, **extra, **kw)


@BACKENDS
@pytest.mark.parametrize("cell", list(CELLS))
def test_torch_modules_on_the_cuda_backend(backend, kernels, cell, monkeypatch):
    """fastrnn.torch on CUDA tensors (on the emulator: CPU tensors routed to the CUDA backend)
    gives the CPU path's outputs and gradients, with dropout from torch's RNG, batch_first,
    packed sequences, retain_graph and diagnostics."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    from torch.nn.utils.rnn import pack_padded_sequence
    dev = "cuda" if backend == "gpu" else "cpu"
    lstm = cell == "lstm"
    for kw in (dict(num_layers=2, bidirectional=True, dropout=0.4), dict(batch_first=True)):
        results = []
        for on_gpu in (False, True):
            monkeypatch.setattr(ft, "_on_gpu", lambda t, on=on_gpu: on or t.device.type == "cuda")
            m = torch_twins(ft, cell, torch.float64, **kw).to(dev if on_gpu else "cpu")
            x = torch.randn(6, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            x = x.to(dev if on_gpu else "cpu").requires_grad_(True)
            torch.manual_seed(5)
            out, state = m(x)
            states = state if lstm else (state,)
            loss = out.square().sum() + sum(s.sum() for s in states)
            loss.backward(retain_graph=True)
            loss.backward()  # the cache is kept: twice the gradients
            results.append([t.detach().cpu() for t in (out, *states, x.grad, *(p.grad for p in m.parameters()))])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    monkeypatch.setattr(ft, "_on_gpu", lambda t: True)
    m = torch_twins(ft, cell, torch.float64).to(dev)
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=dev, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: m(z)[0], (x,))
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    out_p, _ = m(packed)
    assert out_p.data.shape == (11, 5)
    with torch.no_grad():
        ref = torch_twins(ft, cell, torch.float64)
        monkeypatch.setattr(ft, "_on_gpu", lambda t: t.device.type == "cuda")
        ref_out, _ = ref(pack_padded_sequence(x.detach().cpu(), torch.tensor([5, 2, 4]), enforce_sorted=False))
    torch.testing.assert_close(out_p.data.detach().cpu(), ref_out.data)
    monkeypatch.setattr(ft, "_on_gpu", lambda t: True)
    with fastrnn.diagnostics.record(m) as rec:
        m(x)[0].sum().backward()
    report = rec.report()
    assert report.grad_h_norm.shape == (1, 1, 5) and np.isfinite(report.grad_h_norm).all()
    params = m.params
    if backend == "gpu":
        assert not next(iter(params.values())).flags.writeable
        with pytest.raises(RuntimeError, match="NumPy views exist for CPU tensors only"):
            m.grads


def test_torch_modules_run_on_the_tensors_device_and_restore_the_current_one(emulator, monkeypatch):
    """The CUDA runtime's current device is torch's too: fastrnn.torch makes the tensors' device
    current for its kernels (forward and backward) and the caller's current again after."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    from fastrnn import _torch_cuda
    rec = Recording(emulator)
    use_backend(monkeypatch, rec)
    monkeypatch.setattr(ft, "_on_gpu", lambda t: True)
    monkeypatch.setattr(_torch_cuda, "_device_index", lambda t: 1)  # as if the tensors lived on cuda:1
    emulator.set_device(0)
    m = torch_twins(ft, "lstm", torch.float64)
    out, _ = m(torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True))
    assert emulator.get_device() == 0
    out.sum().backward()
    assert emulator.get_device() == 0
    assert [c for c in rec.calls if c[0] != "synchronize"] == [
        ("set_device", 1), ("forward on device", 1), ("set_device", 0),
        ("set_device", 1), ("backward on device", 1), ("set_device", 0)]


@pytest.mark.parametrize("backend", ["emulator"], indirect=True)
def test_bench_device_cuda_runs_the_numpy_layer_on_the_backend(backend, monkeypatch):
    """python -m fastrnn bench --device cuda, NumPy front end, on the emulator: the fastrnn rows run
    the CUDA backend and agree with the float64 oracle (torch on the GPU is the GPU test's job)."""
    torch = pytest.importorskip("torch")
    from fastrnn.bench import engine as _bench
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    r = _bench.run(cells=["lstm", "gru"], shapes=["5,3,4,6"], peers=["onnxruntime"], repeats=1, min_time=0.001,
                   device="cuda")
    assert any("ignored peers: onnxruntime" in n for n in r["notes"])
    assert len(r["rows"]) == 4
    for row in r["rows"]:
        assert list(row["impls"]) == ["fastrnn"] and row["impls"]["fastrnn"]["status"] == "timed", row
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        _bench.run(device="tpu")


# ---------------------------------------------------------------- GPU only

@needs_gpu
def test_gpu_info_and_memory():
    info = fastrnn.cuda.info()
    assert info["reason"] is None and info["devices"] and info["runtime_version"] >= 11000
    assert fastrnn.cuda.device_count() == len(info["devices"])
    a = np.random.default_rng(0).standard_normal((3, 5))
    np.testing.assert_array_equal(fastrnn.cuda.to_device(a).get(), a)


@needs_gpu
def test_bench_cuda_against_cudnn(tmp_path):
    """python -m fastrnn bench --device cuda: fastrnn.torch on the GPU against torch.nn (cuDNN) on
    the reference shapes; the results must agree (the speed ratios go in docs/cuda.md)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA build of torch")
    r = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("python -m fastrnn bench is not part of this build")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--device", "cuda", "--frontend", "torch",
                        "--shapes", "A", "F", "--quick", "--json", str(out)], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {row["shape"]["T"] for row in rows} == {100, 1000}
    for row in rows:  # every implementation ran and agreed with the others (status "rejected" otherwise)
        assert row["impls"] and all(e["status"] == "timed" for e in row["impls"].values()), row
