"""The C ABI (fastrnn.h, libfastrnn.so): the C and Cython examples against the Python API, the
training pass through ctypes, every validation error, versions, shared state, build files."""
import ctypes
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn import _embed
from util import make_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
HEADER = os.path.join(fastrnn.get_include(), "fastrnn", "fastrnn.h")
LIBRARY = fastrnn.get_library()
# Subprocesses (example builds, the C program) see the fastrnn under test first.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(fastrnn.__file__))] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

CC = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (gcc or cc) on PATH")

OK, INVALID, NOMEM, UNSUPPORTED, VERSION = 0, 1, 2, 3, 4
CELL_CODE = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "gru_v1": 3}
F32, F64 = 1, 2
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


# ---- ctypes mirror of fastrnn.h -------------------------------------------------------------

class Desc(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("cell", ctypes.c_int32), ("dtype", ctypes.c_int32),
                ("bias", ctypes.c_int32), ("reset_after", ctypes.c_int32), ("reserved0", ctypes.c_int32),
                ("seq_len", ctypes.c_int64), ("batch", ctypes.c_int64), ("input_size", ctypes.c_int64),
                ("hidden_size", ctypes.c_int64), ("num_layers", ctypes.c_int64), ("num_directions", ctypes.c_int64)]


class Weights(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


class ForwardOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("reserved0", ctypes.c_int32), ("dropout_masks", ctypes.c_void_p)]


class BackwardOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("retain", ctypes.c_int32), ("bptt_clip", ctypes.c_double),
                ("dropout_masks", ctypes.c_void_p), ("grad_h_sq", ctypes.c_void_p), ("grad_c_sq", ctypes.c_void_p)]


STRUCTS = {"fastrnn_desc": Desc, "fastrnn_weights": Weights, "fastrnn_grads": Weights,
           "fastrnn_forward_options": ForwardOptions, "fastrnn_backward_options": BackwardOptions}


def _load():
    lib = ctypes.CDLL(LIBRARY)  # the copy fastrnn._C already loaded (same soname)
    P, I64, SZ, V = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p
    sigs = {
        "fastrnn_last_error": ([], ctypes.c_char_p), "fastrnn_status_name": ([ctypes.c_int], ctypes.c_char_p),
        "fastrnn_version": ([], ctypes.c_int), "fastrnn_version_string": ([], ctypes.c_char_p),
        "fastrnn_abi_version": ([], ctypes.c_int),
        "fastrnn_check_version": ([ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "fastrnn_desc_init_": ([P, SZ], ctypes.c_int), "fastrnn_param_count": ([P, P], ctypes.c_int),
        "fastrnn_weights_from_flat": ([P, V, I64, P, I64], ctypes.c_int),
        "fastrnn_grads_from_flat": ([P, V, I64, P, I64], ctypes.c_int),
        "fastrnn_cache_size": ([P, ctypes.c_int, P], ctypes.c_int),
        "fastrnn_workspace_size": ([P, ctypes.c_int, P], ctypes.c_int),
        "fastrnn_forward": ([P, P, V, V, V, V, V, V, V, V, SZ, P], ctypes.c_int),
        "fastrnn_backward": ([P, P, V, V, V, SZ, V, V, V, V, V, V, P, P], ctypes.c_int),
        "fastrnn_set_num_threads": ([ctypes.c_int], ctypes.c_int), "fastrnn_get_num_threads": ([], ctypes.c_int),
        "fastrnn_get_isa": ([], ctypes.c_char_p), "fastrnn_available_isa": ([ctypes.c_int], ctypes.c_char_p),
        "fastrnn_set_isa": ([ctypes.c_char_p], ctypes.c_int), "fastrnn_set_last_error": ([ctypes.c_char_p], None),
    }
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, res
    return lib


lib = _load()


def read(path):
    with open(path) as f:
        return f.read()


def last_error():
    return lib.fastrnn_last_error().decode()


def ptr(a):
    """Address of an array (ints, raw addresses, and None pass through)."""
    return a if a is None or isinstance(a, int) else a.ctypes.data


def ref(s):
    return None if s is None else ctypes.byref(s)


def make_desc(cell="lstm", dtype=np.float32, T=5, N=3, C=4, H=6, L=1, D=1, bias=True):
    d = Desc()
    assert lib.fastrnn_desc_init_(ctypes.byref(d), ctypes.sizeof(d)) == OK
    d.cell, d.dtype, d.bias = CELL_CODE[cell], F32 if dtype == np.float32 else F64, int(bias)
    d.reset_after = int(cell != "gru_v1")
    d.seq_len, d.batch, d.input_size, d.hidden_size, d.num_layers, d.num_directions = T, N, C, H, L, D
    return d


def layer_desc(layer, cell, T, N):
    return make_desc(cell, layer.dtype, T, N, layer.input_size, layer.hidden_size, layer.num_layers,
                     layer.num_directions, layer.bias)


def pointer_array(arrays, bias, L, D):
    """Weights/Grads entries from a torch-ordered list of arrays (the per-array layout)."""
    out = (Weights * (L * D))()
    step = 4 if bias else 2
    for i in range(L * D):
        group = arrays[i * step:(i + 1) * step]
        out[i] = Weights(*[ptr(a) for a in group] + [None] * (4 - len(group)))
    return out


def options(cls, **fields):
    o = cls(struct_size=ctypes.sizeof(cls))
    for k, v in fields.items():
        setattr(o, k, v)
    return o


def cache_for(d, dropout=False):
    n = ctypes.c_size_t()
    assert lib.fastrnn_cache_size(ctypes.byref(d), int(dropout), ctypes.byref(n)) == OK, last_error()
    return np.zeros(n.value, np.uint8)


class Problem:
    """A layer, its descriptor, inputs and outputs, ready for fastrnn_forward/backward."""

    def __init__(self, cell="lstm", dtype=np.float32, T=5, N=3, C=4, H=6, L=1, D=1, bias=True, seed=0):
        self.cell, self.dtype, self.lstm = cell, dtype, cell == "lstm"
        self.layer = make_layer(cell, C, H, dtype=dtype, seed=seed, num_layers=L, bidirectional=D == 2, bias=bias)
        self.d = layer_desc(self.layer, cell, T, N)
        self.w = pointer_array(list(self.layer.params.values()), bias, L, D)
        rng = np.random.default_rng(seed + 1)
        self.x = rng.standard_normal((T, N, C)).astype(dtype)
        self.y = np.zeros((T, N, D * H), dtype)
        self.h_n = np.zeros((L * D, N, H), dtype)
        self.c_n = np.zeros((L * D, N, H), dtype) if self.lstm else None

    def forward(self, h0=None, c0=None, lengths=None, cache=None, cache_bytes=None, opts=None, **override):
        a = dict(desc=ctypes.byref(self.d), weights=self.w, x=ptr(self.x), h0=ptr(h0), c0=ptr(c0),
                 lengths=ptr(lengths), y=ptr(self.y), h_n=ptr(self.h_n), c_n=ptr(self.c_n), cache=ptr(cache),
                 cache_bytes=cache.nbytes if cache_bytes is None and cache is not None else (cache_bytes or 0),
                 options=ref(opts))
        a.update(override)
        return lib.fastrnn_forward(*a.values())


def expect_error(status, code, *fragments):
    msg = last_error()
    assert status == code, f"status {status}, expected {code}: {msg!r}"
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


# ---- versions, header, layouts ----------------------------------------------------------------

def header_version():
    text = read(HEADER)
    return tuple(int(re.search(rf"#define FASTRNN_VERSION_{k} (\d+)", text).group(1))
                 for k in ("MAJOR", "MINOR", "PATCH"))


def test_versions_agree():
    major, minor, patch = header_version()
    assert f"{major}.{minor}.{patch}" == fastrnn.__version__ == lib.fastrnn_version_string().decode()
    assert lib.fastrnn_version() == major * 10000 + minor * 100 + patch  # the metadata too: test_packaging.py


def test_check_version():
    abi, version = lib.fastrnn_abi_version(), lib.fastrnn_version()
    major, minor, _ = header_version()
    assert abi == 1
    assert lib.fastrnn_check_version(abi, version) == OK and last_error() == ""
    if minor > 0:  # an older header is served by a newer library
        assert lib.fastrnn_check_version(abi, version - 100) == OK
    expect_error(lib.fastrnn_check_version(abi, version + 100), VERSION, "older than the header")
    expect_error(lib.fastrnn_check_version(abi + 1, version), VERSION, f"(ABI {abi + 1})", "incompatible ABI")
    expect_error(lib.fastrnn_check_version(abi, version + 10000), VERSION, "incompatible ABI")


def test_status_names_and_last_error_per_thread():
    assert [lib.fastrnn_status_name(s).decode() for s in range(6)] == [
        "FASTRNN_OK", "FASTRNN_ERR_INVALID", "FASTRNN_ERR_NOMEM", "FASTRNN_ERR_UNSUPPORTED",
        "FASTRNN_ERR_VERSION", "FASTRNN_ERR_INTERNAL"]
    assert lib.fastrnn_status_name(99) == b"unknown status"
    expect_error(lib.fastrnn_set_num_threads(0), INVALID, "fastrnn_set_num_threads: n = 0")
    seen = []
    t = threading.Thread(target=lambda: seen.append((lib.fastrnn_set_isa(b"nope"), last_error())))
    t.start()
    t.join()
    assert seen[0][0] == INVALID and "unknown ISA 'nope'" in seen[0][1]
    assert "n = 0" in last_error()  # this thread's message is its own
    lib.fastrnn_set_last_error(b"custom")
    assert last_error() == "custom"
    assert lib.fastrnn_get_num_threads() >= 1 and last_error() == "custom"  # no status: untouched
    assert lib.fastrnn_check_version(lib.fastrnn_abi_version(), lib.fastrnn_version()) == OK
    assert last_error() == ""


@needs_cc
@pytest.mark.parametrize("compiler,std", [("c", "-std=c89"), ("c", "-std=c99"), ("c++", "-std=c++11")])
def test_header_is_plain_c_and_cpp(tmp_path, compiler, std):
    src = tmp_path / ("t.c" if compiler == "c" else "t.cpp")
    src.write_text("#include <fastrnn/fastrnn.h>\nint main(void) { fastrnn_desc d; return "
                   "fastrnn_desc_init(&d) != FASTRNN_OK || FASTRNN_CHECK_VERSION() != FASTRNN_OK; }\n")
    cmd = [CC, "-x", compiler, std, "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
           *_embed.compile_flags(), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def check_struct_layouts(tmp_path, structs):
    """sizeof and every field's offset, compiled from fastrnn.h, against the ctypes mirrors."""
    lines = []
    for struct, cls in structs.items():
        lines.append(f'printf("{struct} %zu\\n", sizeof({struct}));')
        lines += [f'printf("{struct}.{f} %zu\\n", offsetof({struct}, {f}));' for f, _ in cls._fields_]
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <fastrnn/fastrnn.h>\nint main(void) {\n"
                   + "\n".join(lines) + "\nreturn 0; }\n")
    exe = tmp_path / "layout"
    subprocess.run([CC, "-std=c99", *_embed.compile_flags(), str(src), "-o", str(exe)], check=True)
    got = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                       check=True).stdout.splitlines())
    for struct, cls in structs.items():
        assert int(got[struct]) == ctypes.sizeof(cls), struct
        for f, _ in cls._fields_:
            assert int(got[f"{struct}.{f}"]) == getattr(cls, f).offset, f"{struct}.{f}"


@needs_cc
def test_struct_layouts_match_ctypes_mirror(tmp_path):
    check_struct_layouts(tmp_path, STRUCTS)
    assert ctypes.sizeof(Desc) == 72  # frozen: growing it is the struct_size mechanism's job


def test_pxd_declares_every_function():
    pxd = read(os.path.join(os.path.dirname(fastrnn.__file__), "cython", "fastrnn.pxd"))
    functions = re.findall(r"FASTRNN_API [^;]*?\b(fastrnn_\w+)\(", read(HEADER))
    assert len(functions) == 37
    for name in functions:
        if name in ("fastrnn_desc_init_", "fastrnn_plan_options_init_"):
            name = name[:-1]  # the macro is what code calls
        assert re.search(rf"\b{name}\(", pxd), name
    assert os.path.isfile(os.path.join(os.path.dirname(fastrnn.__file__), "cython", "__init__.pxd"))
    # the plan options' last field and its enum, as the header names them (0.2's reserved0)
    options = re.search(r"ctypedef struct fastrnn_plan_options:(.*?)\n\n", pxd, re.S).group(1)
    assert "int32_t compute" in options and "reserved0" not in options, options
    for name in ("FASTRNN_COMPUTE_DEFAULT", "FASTRNN_COMPUTE_INT8", "FASTRNN_COMPUTE_BF16"):
        assert name in pxd and name in read(HEADER), name


# ---- one core for Python and C ---------------------------------------------------------------

def test_python_and_c_share_one_core():
    maps = read("/proc/self/maps")
    assert len({line.split()[-1] for line in maps.splitlines() if line.endswith("/libfastrnn.so.1")}) == 1
    threads, isa = fastrnn.get_num_threads(), fastrnn.get_isa()
    try:
        fastrnn.set_num_threads(3)
        assert lib.fastrnn_get_num_threads() == 3
        assert lib.fastrnn_set_num_threads(2) == OK and fastrnn.get_num_threads() == 2
        assert lib.fastrnn_set_isa(b"scalar") == OK and fastrnn.get_isa() == "scalar"
        fastrnn.set_isa(isa)
        assert lib.fastrnn_get_isa().decode() == isa
    finally:
        fastrnn.set_num_threads(threads)
        fastrnn.set_isa(isa)
    isas, i = [], 0
    while lib.fastrnn_available_isa(i):
        isas.append(lib.fastrnn_available_isa(i).decode())
        i += 1
    assert isas == fastrnn.available_isas() and lib.fastrnn_available_isa(-1) is None
    expect_error(lib.fastrnn_set_isa(None), INVALID, "name: NULL")


# ---- forward and backward through ctypes against the Python API --------------------------------

TRAIN_CASES = [
    ("lstm", np.float32, 2, 2, True, True, False),
    ("lstm", np.float64, 1, 1, False, False, False),
    ("gru", np.float64, 2, 1, True, True, True),
    ("gru_v1", np.float32, 1, 2, True, True, False),
    ("rnn_tanh", np.float64, 1, 2, False, True, False),
    ("rnn_relu", np.float32, 2, 1, True, False, True),
]


@pytest.mark.parametrize("cell,dtype,L,D,use_lengths,bias,dropout", TRAIN_CASES)
def test_training_matches_python_api(cell, dtype, L, D, use_lengths, bias, dropout):
    T, N, C, H = 6, 3, 4, 5
    p = Problem(cell, dtype, T, N, C, H, L, D, bias=bias, seed=L * 10 + D)
    layer = p.layer
    if dropout:
        layer.dropout = 0.3
    rng = np.random.default_rng(3)
    lengths = np.array([6, 2, 4], np.int64) if use_lengths else None
    h0 = rng.standard_normal((L * D, N, H)).astype(dtype)
    c0 = rng.standard_normal((L * D, N, H)).astype(dtype) if p.lstm else None
    go = rng.standard_normal((T, N, D * H)).astype(dtype)
    ghn = rng.standard_normal((L * D, N, H)).astype(dtype)
    gcn = rng.standard_normal((L * D, N, H)).astype(dtype) if p.lstm else None

    layer.train().zero_grad()
    out, state = layer(p.x, (h0, c0) if p.lstm else h0, lengths)
    masks = layer._ctx.masks
    assert (masks is not None) == dropout
    back = layer.backward(go, ghn, gcn) if p.lstm else layer.backward(go, ghn)

    cache = cache_for(p.d, dropout)
    fopts = options(ForwardOptions, dropout_masks=ptr(masks)) if dropout else None
    assert p.forward(h0, c0, lengths, cache, opts=fopts) == OK, last_error()
    h_n = state[0] if p.lstm else state
    np.testing.assert_allclose(p.y, out, **TOL[dtype])
    np.testing.assert_allclose(p.h_n, h_n, **TOL[dtype])
    if p.lstm:
        np.testing.assert_allclose(p.c_n, state[1], **TOL[dtype])

    grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    g = pointer_array(list(grads.values()), bias, L, D)
    gx, gh0 = np.empty_like(p.x), np.empty_like(h0)
    gc0 = np.empty_like(h0) if p.lstm else None
    bopts = options(BackwardOptions, dropout_masks=ptr(masks))
    status = lib.fastrnn_backward(ctypes.byref(p.d), p.w, ptr(p.x), ptr(lengths), ptr(cache), cache.nbytes, ptr(go),
                                  ptr(ghn), ptr(gcn), ptr(gx), ptr(gh0), ptr(gc0), g, ctypes.byref(bopts))
    assert status == OK, last_error()
    np.testing.assert_allclose(gx, back[0], **TOL[dtype])
    np.testing.assert_allclose(gh0, back[1], **TOL[dtype])
    if p.lstm:
        np.testing.assert_allclose(gc0, back[2], **TOL[dtype])
    for k in grads:
        np.testing.assert_allclose(grads[k], layer.grads[k], **TOL[dtype], err_msg=k)
    # consumed: a second backward is refused with a reason
    status = lib.fastrnn_backward(ctypes.byref(p.d), p.w, ptr(p.x), ptr(lengths), ptr(cache), cache.nbytes, ptr(go),
                                  None, None, None, None, None, g, ctypes.byref(bopts))
    expect_error(status, INVALID, "fastrnn_backward: cache: consumed")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_retain_clip_and_diagnostics_match_binding(cell):
    """retain keeps the cache; bptt_clip and grad_h_sq/grad_c_sq reach the core as from Python."""
    from fastrnn import functional as F

    T, N, C, H, L, D = 7, 2, 3, 4, 2, 2
    p = Problem(cell, np.float64, T, N, C, H, L, D, seed=5)
    go = np.random.default_rng(0).standard_normal((T, N, D * H)) * 50  # large enough to be clipped
    cache = cache_for(p.d)
    assert p.forward(cache=cache) == OK, last_error()
    lstm = cell == "lstm"

    def c_backward(clip, retain):
        grads = [np.zeros_like(v) for v in p.layer.params.values()]
        gx, gh0 = np.empty_like(p.x), np.empty((L * D, N, H))
        hsq, csq = np.zeros((L, D, T)), (np.zeros((L, D, T)) if lstm else None)
        o = options(BackwardOptions, retain=retain, bptt_clip=clip, grad_h_sq=ptr(hsq), grad_c_sq=ptr(csq))
        s = lib.fastrnn_backward(ctypes.byref(p.d), p.w, ptr(p.x), None, ptr(cache), cache.nbytes, ptr(go), None,
                                 None, ptr(gx), ptr(gh0), None, pointer_array(grads, True, L, D), ctypes.byref(o))
        assert s == OK, last_error()
        return gx, grads, hsq, csq

    def binding_backward(clip):  # what Python's binding does with the same arguments
        layer = p.layer.train()
        layer(p.x)
        ctx = layer._ctx
        grads = [np.zeros_like(v) for v in layer.params.values()]
        gx, gh0 = np.empty_like(p.x), np.empty((L * D, N, H))
        gc0 = np.empty((L * D, N, H)) if lstm else None
        hsq, csq = np.zeros(L * D * T), (np.zeros(L * D * T) if lstm else None)
        ctx.plan.backward(ctx.x, ctx.cache, go, None, None, gx, gh0, gc0, grads, retain=False, bptt_clip=clip,
                          grad_h_sq=hsq, grad_c_sq=csq)
        return gx, grads, hsq.reshape(L, D, T), (csq.reshape(L, D, T) if lstm else None)

    first, again, plain = c_backward(0.5, retain=1), c_backward(0.5, retain=1), c_backward(0.0, retain=0)
    want = binding_backward(0.5)
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(first[0], want[0], **tol)
    for a, b in zip(first[1], want[1]):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(first[2], want[2], **tol)
    assert (first[2] > 0).all()
    if lstm:
        np.testing.assert_allclose(first[3], want[3], **tol)
    np.testing.assert_array_equal(again[0], first[0])  # retain kept the cache intact
    for a, b in zip(again[1], first[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(plain[0], first[0])  # and the clipping changed the gradient


def test_flat_weights_and_grads_layout():
    p = Problem("gru", np.float64, L=2, D=2)
    flat = np.concatenate([v.ravel() for v in p.layer.params.values()])
    count = ctypes.c_int64()
    assert lib.fastrnn_param_count(ctypes.byref(p.d), ctypes.byref(count)) == OK
    assert count.value == flat.size
    out = (Weights * 4)()
    assert lib.fastrnn_weights_from_flat(ctypes.byref(p.d), ptr(flat), flat.size, out, 4) == OK
    for entry, want in zip([getattr(out[i], f) for i in range(4) for f in ("weight_ih", "weight_hh", "bias_ih",
                                                                           "bias_hh")], p.layer.params.values()):
        offset = (entry - flat.ctypes.data) // 8
        np.testing.assert_array_equal(flat[offset:offset + want.size], want.ravel())
    assert lib.fastrnn_grads_from_flat(ctypes.byref(p.d), ptr(flat), flat.size, out, 4) == OK
    expect_error(lib.fastrnn_weights_from_flat(ctypes.byref(p.d), ptr(flat), flat.size - 1, out, 4), INVALID,
                 "fastrnn_weights_from_flat: count = ", f"expected {flat.size}")
    expect_error(lib.fastrnn_weights_from_flat(ctypes.byref(p.d), ptr(flat), flat.size, out, 3), INVALID,
                 "out_len = 3, expected at least L*D = 4")
    expect_error(lib.fastrnn_weights_from_flat(ctypes.byref(p.d), None, flat.size, out, 4), INVALID, "params: NULL")


def test_sizes():
    p = Problem("lstm", np.float32, T=9, N=2, C=3, H=4, L=2, D=2)
    cache, dropped = cache_for(p.d), cache_for(p.d, dropout=True)
    from fastrnn import functional as F
    core = F._config("lstm", 3, 4, 2, True, True, np.float32).cache_size(9, 2, False)
    assert core * 4 < cache.nbytes <= core * 4 + 256 and dropped.nbytes > cache.nbytes
    assert p.forward(cache=cache) == OK
    expect_error(p.forward(cache=cache, cache_bytes=cache.nbytes - 1), INVALID,
                 f"cache_bytes = {cache.nbytes - 1}, expected at least {cache.nbytes}")
    sizes = []
    for pass_ in range(4):
        n = ctypes.c_size_t()
        assert lib.fastrnn_workspace_size(ctypes.byref(p.d), pass_, ctypes.byref(n)) == OK
        sizes.append(n.value)
    assert all(s > 0 for s in sizes) and sizes[3] > sizes[2]  # retaining copies the gates
    n = ctypes.c_size_t()
    expect_error(lib.fastrnn_workspace_size(ctypes.byref(p.d), 4, ctypes.byref(n)), INVALID, "pass = 4")
    expect_error(lib.fastrnn_cache_size(ctypes.byref(p.d), 2, ctypes.byref(n)), INVALID, "dropout = 2")
    expect_error(lib.fastrnn_cache_size(ctypes.byref(p.d), 0, None), INVALID, "bytes: NULL")


# ---- bad input: error codes and messages, never a crash ---------------------------------------

@pytest.mark.parametrize("field,value,fragment", [
    ("struct_size", 0, "desc->struct_size = 0, expected sizeof = 72"),
    ("struct_size", 1 << 20, "desc->struct_size = 1048576"),
    ("cell", 4, "desc->cell = 4"),
    ("cell", 6, "desc->cell = 6, expected FASTRNN_RNN_TANH (0)"),
    ("dtype", 0, "desc->dtype = 0, expected FASTRNN_FLOAT32 (1) or FASTRNN_FLOAT64 (2)"),
    ("bias", 2, "desc->bias = 2, expected 0 or 1"),
    ("reset_after", -1, "desc->reset_after = -1"),
    ("reserved0", 1, "desc->reserved0 = 1, expected 0"),
    ("seq_len", 0, "desc->seq_len = 0, expected >= 1"),
    ("batch", -3, "desc->batch = -3, expected >= 1"),
    ("input_size", 0, "desc->input_size = 0"),
    ("hidden_size", 0, "desc->hidden_size = 0"),
    ("num_layers", 0, "desc->num_layers = 0"),
    ("num_directions", 3, "desc->num_directions = 3, expected 1 or 2"),
    ("num_directions", 0, "desc->num_directions = 0"),
    ("hidden_size", 1 << 62, "desc: sizes too large, T*N*D*H overflows int64"),
    ("num_layers", 1 << 60, "desc: sizes too large, L*D*T*N*H*64 overflows int64"),
    ("seq_len", 1 << 31, "desc: T*N = 6442450944 exceeds 2147483647 (32-bit BLAS indices)"),
    ("hidden_size", 1 << 15, "desc: G*H*H (weight_hh) = 4294967296 exceeds 2147483647"),
])
def test_bad_descriptor(field, value, fragment):
    p = Problem("lstm")
    setattr(p.d, field, value)
    calls = [p.forward, lambda: lib.fastrnn_param_count(ctypes.byref(p.d), ctypes.byref(ctypes.c_int64())),
             lambda: lib.fastrnn_cache_size(ctypes.byref(p.d), 0, ctypes.byref(ctypes.c_size_t())),
             lambda: lib.fastrnn_workspace_size(ctypes.byref(p.d), 0, ctypes.byref(ctypes.c_size_t()))]
    for call, fn in zip(calls, ["forward", "param_count", "cache_size", "workspace_size"]):
        expect_error(call(), INVALID, f"fastrnn_{fn}: " + fragment)


def test_descriptor_growth_rule():
    """A struct from a newer header works when its unknown tail is zero, else UNSUPPORTED."""
    p = Problem("lstm")
    big = (ctypes.c_ubyte * 96)()
    ctypes.memmove(big, ctypes.byref(p.d), 72)
    ctypes.cast(big, ctypes.POINTER(ctypes.c_uint32))[0] = 96
    assert p.forward(desc=big) == OK, last_error()
    y = p.y.copy()
    assert p.forward() == OK and np.array_equal(p.y, y)
    big[80] = 1
    expect_error(p.forward(desc=big), UNSUPPORTED, "desc sets a field at byte 80", "upgrade the library")
    assert lib.fastrnn_desc_init_(big, 96) == OK and big[80] == 0 and big[0] == 96
    expect_error(lib.fastrnn_desc_init_(big, 8), INVALID, "struct_size = 8")
    expect_error(lib.fastrnn_desc_init_(None, 72), INVALID, "fastrnn_desc_init: desc: NULL")
    expect_error(p.forward(desc=None), INVALID, "fastrnn_forward: desc: NULL")
    expect_error(p.forward(opts=ForwardOptions(struct_size=4)), INVALID, "options->struct_size = 4")
    expect_error(p.forward(opts=options(ForwardOptions, reserved0=7)), INVALID, "options->reserved0 = 7")


def test_bad_pointers_and_values():
    p = Problem("lstm", np.float32, L=2, D=1)
    w = p.w
    expect_error(p.forward(weights=None), INVALID, "weights: NULL (expected L*D = 2 entries)")
    saved = w[1].weight_hh
    w[1].weight_hh = None
    expect_error(p.forward(), INVALID, "weights[1].weight_hh: NULL")
    w[1].weight_hh = saved + 2  # not float-aligned
    expect_error(p.forward(), INVALID, "weights[1].weight_hh: pointer not aligned to 4 bytes")
    w[1].weight_hh = saved
    saved = w[0].bias_ih
    w[0].bias_ih = None
    expect_error(p.forward(), INVALID, "weights[0].bias_ih: NULL")
    w[0].bias_ih = saved
    expect_error(p.forward(x=None), INVALID, "fastrnn_forward: x: NULL")
    expect_error(p.forward(y=None), INVALID, "fastrnn_forward: y: NULL")
    expect_error(p.forward(h0=p.x.ctypes.data + 1), INVALID, "h0: pointer not aligned")
    for bad in ([0, 1, 1], [1, 6, 1], [1, 1, -2]):
        expect_error(p.forward(lengths=np.array(bad, np.int64)), INVALID, "lengths[",
                     "expected 1 <= lengths[n] <= T = 5")
    assert p.forward(h_n=None, c_n=None) == OK  # optional outputs

    g = Problem("gru", np.float64, bias=False)
    expect_error(g.forward(c0=ptr(g.x)), INVALID, "c0: must be NULL for FASTRNN_GRU")
    expect_error(g.forward(c_n=ptr(g.x)), INVALID, "c_n: must be NULL")
    g.w[0].bias_hh = ptr(g.x)
    expect_error(g.forward(), INVALID, "weights[0].bias_hh: must be NULL when desc->bias = 0")


def test_bad_training_calls():
    p = Problem("lstm", np.float32, L=2, D=2)
    L, D, T, N, H = 2, 2, 5, 3, 6
    masks = np.ones((L - 1, T, N, D * H), np.float32)
    lengths = np.array([5, 2, 3], np.int64)
    grads = [np.zeros_like(v) for v in p.layer.params.values()]
    g = pointer_array(grads, True, L, D)

    def backward(cache, cache_bytes=None, opts=None, **kw):
        a = dict(desc=ctypes.byref(p.d), weights=p.w, x=ptr(p.x), lengths=None, cache=ptr(cache),
                 cache_bytes=cache.nbytes if cache_bytes is None and cache is not None else (cache_bytes or 0),
                 grad_y=None, grad_h_n=None, grad_c_n=None, grad_x=None, grad_h0=None, grad_c0=None, grads=g,
                 options=ref(opts))
        a.update(kw)
        return lib.fastrnn_backward(*a.values())

    cache = cache_for(p.d)
    expect_error(backward(cache), INVALID, "cache: not filled by a successful training fastrnn_forward")
    expect_error(backward(None), INVALID, "fastrnn_backward: cache: NULL")
    expect_error(p.forward(cache=cache, cache_bytes=100), INVALID, "cache_bytes = 100")
    expect_error(p.forward(opts=options(ForwardOptions, dropout_masks=ptr(masks))), INVALID,
                 "options->dropout_masks: only used by a training forward")
    expect_error(p.forward(cache=cache, opts=options(ForwardOptions, dropout_masks=ptr(masks))), INVALID,
                 "cache_bytes", "dropout = 1")
    assert p.forward(cache=cache, lengths=lengths) == OK
    expect_error(backward(cache), INVALID, "lengths: NULL, but the forward that filled the cache had lengths")
    expect_error(backward(cache, lengths=ptr(lengths), opts=options(BackwardOptions, dropout_masks=ptr(masks))),
                 INVALID, "options->dropout_masks: given, but the forward")
    expect_error(backward(cache, cache_bytes=64), INVALID, "cache_bytes = 64")
    for opts, fragment in [(options(BackwardOptions, retain=2), "options->retain = 2"),
                           (options(BackwardOptions, bptt_clip=-1.0), "options->bptt_clip = -1"),
                           (options(BackwardOptions, bptt_clip=math.nan), "options->bptt_clip = nan"),
                           (options(BackwardOptions, grad_c_sq=ptr(np.zeros(L * D * T))),
                            "options->grad_c_sq: needs options->grad_h_sq")]:
        expect_error(backward(cache, lengths=ptr(lengths), opts=opts), INVALID, fragment)
    expect_error(backward(cache, lengths=ptr(lengths), grads=None), INVALID, "grads: NULL")
    saved = g[3].weight_ih
    g[3].weight_ih = None
    expect_error(backward(cache, lengths=ptr(lengths)), INVALID, "grads[3].weight_ih: NULL")
    g[3].weight_ih = saved
    other = Problem("lstm", np.float32, L=2, D=2, N=2)
    expect_error(lib.fastrnn_backward(ctypes.byref(other.d), p.w, ptr(p.x), None, ptr(cache), cache.nbytes, None,
                                      None, None, None, None, None, g, None), INVALID,
                 "cache: filled by a forward with desc->batch = 3, this call has 2")
    assert backward(cache, lengths=ptr(lengths)) == OK, last_error()  # all refusals left it intact

    with_masks = cache_for(p.d, dropout=True)
    assert p.forward(cache=with_masks, opts=options(ForwardOptions, dropout_masks=ptr(masks))) == OK
    expect_error(backward(with_masks), INVALID, "options->dropout_masks: NULL, but the forward")
    one = Problem("lstm", np.float32, L=1)
    expect_error(one.forward(cache=cache_for(one.d, True), opts=options(ForwardOptions, dropout_masks=ptr(masks))),
                 INVALID, "must be NULL when num_layers = 1")
    gru = Problem("gru", np.float64)
    gcache = cache_for(gru.d)
    assert gru.forward(cache=gcache) == OK
    s = lib.fastrnn_backward(ctypes.byref(gru.d), gru.w, ptr(gru.x), None, ptr(gcache), gcache.nbytes, None, None,
                             ptr(gru.x), None, None, None, None, None)
    expect_error(s, INVALID, "grad_c_n: must be NULL for FASTRNN_GRU")


NOMEM_SCRIPT = r"""
import ctypes, resource, sys
import numpy as np
import fastrnn
sys.path.insert(0, sys.argv[1])
import test_capi as t
vm = int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize")][0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
L, H = 1 << 20, 1024
d = t.make_desc("rnn_tanh", np.float32, T=1, N=1, C=1, H=H, L=L)
w_ih0, b = np.zeros((H, 1), np.float32), np.zeros(H, np.float32)
w_ih, w_hh = np.zeros((H, H), np.float32), np.zeros((H, H), np.float32)
ws = (t.Weights * L)(*([t.Weights(w_ih0.ctypes.data, w_hh.ctypes.data, b.ctypes.data, b.ctypes.data)]
                      + [t.Weights(w_ih.ctypes.data, w_hh.ctypes.data, b.ctypes.data, b.ctypes.data)] * (L - 1)))
x, y = np.zeros(1, np.float32), np.zeros(H, np.float32)
# h_n = NULL: a 4 GiB temporary for the final states, beyond the address-space limit
s = t.lib.fastrnn_forward(ctypes.byref(d), ws, x.ctypes.data, None, None, None, y.ctypes.data, None, None, None, 0,
                          None)
print(s, t.last_error())
"""


def test_out_of_memory_is_a_status():
    r = subprocess.run([sys.executable, "-c", NOMEM_SCRIPT, os.path.dirname(os.path.abspath(__file__))],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    status, _, message = r.stdout.strip().partition(" ")
    assert int(status) == NOMEM and message.startswith("fastrnn_forward: out of memory"), r.stdout


# ---- the C example ------------------------------------------------------------------------------

def load_example_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def c_example(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler (gcc or cc) on PATH")
    out = tmp_path_factory.mktemp("c_example")
    flags = subprocess.run([sys.executable, "-m", "fastrnn", "config", "--cflags", "--libs"], env=ENV,
                           capture_output=True, text=True, check=True).stdout.split()
    exe = out / "lstm_infer"
    r = subprocess.run([CC, "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror",
                        os.path.join(EXAMPLES, "c", "lstm_infer.c"), *flags, "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def run_c_example(exe, layer, x, lengths, tmp_path, env=None):
    save = load_example_module(os.path.join(EXAMPLES, "c", "save_model.py"), "save_model")
    save.save_model(layer, str(tmp_path))
    np.save(tmp_path / "x.npy", x)
    args = [str(exe), str(tmp_path), str(tmp_path / "x.npy"), str(tmp_path)]
    if lengths is not None:
        np.save(tmp_path / "lengths.npy", lengths)
        args.append(str(tmp_path / "lengths.npy"))
    # No LD_LIBRARY_PATH: run paths find libfastrnn.so and, from it, the BLAS.
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("cell,dtype,L,D,bias,use_lengths", [
    ("lstm", np.float32, 1, 1, True, False),
    ("lstm", np.float64, 2, 2, True, True),
    ("lstm", np.float32, 1, 2, False, True),
    ("gru", np.float32, 2, 1, True, True),
    ("gru", np.float64, 1, 2, True, False),
    ("gru_v1", np.float32, 1, 2, True, True),
    ("rnn_tanh", np.float32, 1, 2, True, True),
    ("rnn_relu", np.float64, 2, 1, True, False),
])
def test_c_example_matches_python_api(c_example, tmp_path, cell, dtype, L, D, bias, use_lengths):
    T, N, C, H = 7, 3, 5, 9
    layer = make_layer(cell, C, H, dtype=dtype, seed=L + D, num_layers=L, bidirectional=D == 2, bias=bias).eval()
    x = np.random.default_rng(2).standard_normal((T, N, C)).astype(dtype)
    lengths = np.array([7, 3, 5], np.int64) if use_lengths else None
    r = run_c_example(c_example, layer, x, lengths, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"fastrnn {fastrnn.__version__} (isa ") and f"y [{T}, {N}, {D * H}]" in r.stdout
    y, state = layer(x, lengths=lengths)
    h_n, c_n = state if cell == "lstm" else (state, None)
    for name, want in [("y", y), ("h_n", h_n), ("c_n", c_n)]:
        if want is not None:
            got = np.load(tmp_path / f"{name}.npy")
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=name)
    assert (tmp_path / "c_n.npy").exists() == (cell == "lstm")


def test_c_example_reports_library_errors(c_example, tmp_path):
    layer = make_layer("lstm", 2, 3, dtype=np.float32, seed=0)
    x = np.zeros((4, 2, 2), np.float32)
    r = run_c_example(c_example, layer, x, np.array([4, 5], np.int64), tmp_path,
                      env=dict(os.environ, FASTRNN_NUM_THREADS="2"))
    assert r.returncode == 1
    assert r.stderr.strip() == "FASTRNN_ERR_INVALID: fastrnn_forward: lengths[1] = 5, expected 1 <= lengths[n] <= T = 4"


def test_config_command():
    run = lambda *a: subprocess.run([sys.executable, "-m", "fastrnn", "config", *a], env=ENV,  # noqa: E731
                                    capture_output=True, text=True)
    r = run("--cflags", "--libs", "--include-dir", "--library-dir", "--library", "--pkgconfig-dir", "--cmake-dir")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [" ".join(_embed.compile_flags()), " ".join(_embed.link_flags()),
                                     fastrnn.get_include(), fastrnn.get_library_dir(), fastrnn.get_library(),
                                     _embed.get_pkgconfig_dir(), _embed.get_cmake_dir()]
    r = run()
    assert r.returncode == 2 and "give at least one of --cflags" in r.stderr


@needs_cc
@pytest.mark.skipif(shutil.which("pkg-config") is None, reason="pkg-config not installed")
def test_pkg_config_build(tmp_path):
    env = dict(ENV, PKG_CONFIG_PATH=_embed.get_pkgconfig_dir())
    pkg_config = lambda *a: subprocess.run(["pkg-config", *a, "fastrnn"], env=env,  # noqa: E731
                                           capture_output=True, text=True, check=True).stdout.split()
    assert pkg_config("--modversion") == [fastrnn.__version__]
    exe = tmp_path / "lstm_infer"
    subprocess.run([CC, "-std=c99", os.path.join(EXAMPLES, "c", "lstm_infer.c"), *pkg_config("--cflags", "--libs"),
                    "-o", str(exe)], check=True)
    layer = make_layer("gru", 3, 4, dtype=np.float32, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    assert run_c_example(exe, layer, x, None, tmp_path).returncode == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), layer.eval()(x)[0], **TOL[np.float32])


@needs_cc
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_find_package(tmp_path):
    build = tmp_path / "build"
    r = subprocess.run(["cmake", "-S", os.path.join(EXAMPLES, "c"), "-B", str(build), f"-DCMAKE_C_COMPILER={CC}",
                        f"-Dfastrnn_DIR={_embed.get_cmake_dir()}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    layer = make_layer("lstm", 3, 4, dtype=np.float64, seed=2)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    assert run_c_example(build / "lstm_infer", layer, x, None, tmp_path).returncode == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), layer.eval()(x)[0], **TOL[np.float64])
    # a request for a newer version than the installed one is refused
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.15)\nproject(p NONE)\nfind_package(fastrnn 99.0 REQUIRED)\n")
    r = subprocess.run(["cmake", "-S", str(tmp_path / "newer"), "-B", str(tmp_path / "newer" / "b"),
                        f"-Dfastrnn_DIR={_embed.get_cmake_dir()}"], capture_output=True, text=True)
    assert r.returncode != 0 and 'compatible with requested version "99.0"' in r.stderr


# ---- the Cython example -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cython_example(tmp_path_factory):
    pytest.importorskip("Cython", reason="Cython is not installed: the Cython example cannot be built")
    if CC is None or sysconfig.get_config_var("CC") is None:
        pytest.skip("no C compiler to build the Cython example")
    out = tmp_path_factory.mktemp("cython_example")
    for name in ("stream_lstm.pyx", "setup.py"):
        shutil.copy(os.path.join(EXAMPLES, "cython", name), out)
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=out, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    built = [f for f in os.listdir(out) if f.startswith("stream_lstm") and f.endswith(".so")]
    return load_example_module(os.path.join(out, built[0]), "stream_lstm")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cython_nogil_forward_matches_python_api(cython_example, dtype):
    layer = make_layer("lstm", 4, 6, dtype=dtype, seed=3, num_layers=2, bidirectional=True).eval()
    params = np.concatenate([p.ravel() for p in layer.params.values()])
    x = np.random.default_rng(4).standard_normal((8, 3, 4)).astype(dtype)
    lengths = np.array([8, 1, 5], np.int64)
    y, (h_n, c_n) = cython_example.lstm_forward(params, x, 6, num_layers=2, bidirectional=True, lengths=lengths)
    want_y, (want_h, want_c) = layer(x, lengths=lengths)
    for got, want in [(y, want_y), (h_n, want_h), (c_n, want_c)]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])
    with pytest.raises(ValueError, match="FASTRNN_ERR_INVALID: fastrnn_weights_from_flat: count = "):
        cython_example.lstm_forward(params[:-1], x, 6, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"INVALID: lstm_forward_f(32|64): lengths.shape\[0\] \(N\) has 2, expected 3"):
        cython_example.lstm_forward(params, x, 6, num_layers=2, bidirectional=True, lengths=lengths[:2])


def test_cython_stream_steps_match_python_api(cython_example):
    """fastrnn_stream_* from Cython, one step per call without the GIL, as one Python call."""
    layer = make_layer("lstm", 4, 6, dtype=np.float32, seed=5, num_layers=2).eval()
    params = np.concatenate([p.ravel() for p in layer.params.values()])
    x = np.random.default_rng(0).standard_normal((9, 3, 4)).astype(np.float32)
    y, (h, c) = cython_example.lstm_stream_steps(params, x, 6, num_layers=2)
    want, (h_n, c_n) = layer(x)
    for got, ref in ((y, want), (h, h_n), (c, c_n)):
        np.testing.assert_allclose(got, ref, **TOL[np.float32])
    with pytest.raises(ValueError, match="FASTRNN_ERR_INVALID"):
        cython_example.lstm_stream_steps(params, x, 6, num_layers=0)


def test_cython_streams_and_python_threads(cython_example):
    layer = make_layer("lstm", 5, 7, dtype=np.float32, seed=6).eval()
    params = np.concatenate([p.ravel() for p in layer.params.values()])
    xs = np.random.default_rng(5).standard_normal((6, 9, 2, 5)).astype(np.float32)
    want = [layer(x) for x in xs]

    ys, hs, cs = cython_example.lstm_forward_streams(params, xs, 7, num_threads=3)  # prange, nogil
    for s, (y, (h, c)) in enumerate(want):
        np.testing.assert_allclose(ys[s], y, **TOL[np.float32])
        np.testing.assert_allclose(hs[s], h, **TOL[np.float32])
        np.testing.assert_allclose(cs[s], c, **TOL[np.float32])

    results = {}
    start = threading.Barrier(4)

    def worker(k):  # Python threads entering the nogil forward at once
        start.wait()
        results[k] = [cython_example.lstm_forward(params, xs[s], 7)[0] for s in range(k, len(xs), 4) for _ in (0, 1)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        for i, s in enumerate(s for s in range(k, len(xs), 4) for _ in (0, 1)):
            np.testing.assert_allclose(results[k][i], want[s][0], **TOL[np.float32])
    with pytest.raises(ValueError, match="FASTRNN_ERR_INVALID: fastrnn_weights_from_flat"):
        cython_example.lstm_forward_streams(params[1:], xs, 7)
