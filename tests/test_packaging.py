"""The installed package as a maintainer checks it: one version everywhere, and the shared
library's soname, symbol versions and exported symbols (csrc/capi/libfastrnn.map)."""
import ctypes
import glob
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess

import pytest

import fastrnn

HEADER = os.path.join(fastrnn.get_include(), "fastrnn", "fastrnn.h")
LIB_DIR = fastrnn.get_library_dir()
EXTENSIONS = glob.glob(os.path.join(os.path.dirname(fastrnn.__file__), "_C*.so")) + \
    glob.glob(os.path.join(os.path.dirname(fastrnn.__file__), "_cuda*.so"))
needs_readelf = pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("c++filt") is None,
                                   reason="needs binutils (readelf, c++filt)")

# The C++ entry points fastrnn's own modules (_C, _cuda) call: the internal FASTRNN_PRIVATE node.
PRIVATE = {"cache_elements", "saturation_stats",
           "forward_scratch_elements", "backward_scratch_elements", "get_num_threads", "set_num_threads",
           "set_thread_omp", "get_isa", "available_isas", "set_isa", "forward", "backward", "forward_stats",
           "active_kernels", "parameter_layout", "validate_config",
           # test hooks of the thread pool (tests/test_determinism.py, test_threads.py)
           "record_regions", "recorded_regions", "set_backoff", "step_threads", "wait_stats", "barrier_ns", "report_waits",
           # the AVX-512 microkernel's blocking (csrc/dispatch/dispatch.h)
           "microkernel_rows", "set_microkernel_rows", "own_input_gemm", "set_input_gemm",
           # the plan (csrc/core/plan.h): constructor, destructor and methods
           "Plan", "~Plan", "call", "set_weights", "arrange", "weights", "grads", "packed", "packed_bytes", "reduced", "make_reduced",
           # the stream (csrc/core/stream.h): constructor and methods, per dtype
           "Stream", "~Stream", "step", "reset", "h", "c", "batch", "plan", "in_place", "precision", "state_elements",
           "cell_state_elements",
           # reduced precision (csrc/dispatch/dispatch.h, csrc/kernels/bf16.h and int8.h)
           "precision_features", "bf16_kernels", "int8_kernels", "portable_kernels", "pack", "quantize_weights",
           "amx_model_kernels", "enable_amx", "amx_enabled", "use_amx_model"}
if platform.machine() in ("x86_64", "AMD64"):  # the native reduced-precision paths exist on x86-64 only
    PRIVATE |= {"avx512_bf16_kernels", "avx512_fma_kernels", "avx2_fma_kernels", "avx512_vnni_kernels", "avx_vnni_kernels",
                "amx_kernels"}


def header_text():
    with open(HEADER) as f:
        return f.read()


def header_functions():
    return set(re.findall(r"^FASTRNN_API\b[^;(]*?\b(fastrnn_\w+)\s*\(", header_text(), re.M))


def test_one_version_everywhere():
    macros = {k: int(v) for k, v in re.findall(r"#define FASTRNN_(VERSION_MAJOR|VERSION_MINOR|VERSION_PATCH|"
                                               r"ABI_VERSION) (\d+)", header_text())}
    header = "{VERSION_MAJOR}.{VERSION_MINOR}.{VERSION_PATCH}".format(**macros)
    lib = ctypes.CDLL(fastrnn.get_library())
    lib.fastrnn_version_string.restype = ctypes.c_char_p
    assert fastrnn.__version__ == header == importlib.metadata.version("fastrnn")
    assert lib.fastrnn_version_string().decode() == header and lib.fastrnn_abi_version() == macros["ABI_VERSION"]
    assert os.path.basename(fastrnn.get_library()) == f"libfastrnn.so.{macros['ABI_VERSION']}"
    with open(os.path.join(LIB_DIR, "pkgconfig", "fastrnn.pc")) as f:
        assert f"\nVersion: {header}\n" in f.read()
    with open(os.path.join(LIB_DIR, "cmake", "fastrnn", "fastrnnConfigVersion.cmake")) as f:
        assert f'set(PACKAGE_VERSION "{header}")' in f.read()


def readelf(*args):
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@needs_readelf
def test_soname_and_no_unversioned_library():
    assert re.search(r"\(SONAME\)\s+Library soname: \[libfastrnn\.so\.1\]", readelf("-d", fastrnn.get_library()))
    assert not os.path.exists(os.path.join(LIB_DIR, "libfastrnn.so"))  # a wheel carries no dev symlink
    assert EXTENSIONS
    for ext in EXTENSIONS:  # fastrnn's modules link the versioned library, found through $ORIGIN/lib
        dynamic = readelf("-d", ext)
        assert "[libfastrnn.so]" not in dynamic, ext
        if os.path.basename(ext).startswith("_C."):  # _C calls the core; _cuda may not need it
            assert "Shared library: [libfastrnn.so.1]" in dynamic and "$ORIGIN/lib" in dynamic, ext


@needs_readelf
def test_exported_symbols():
    """Defined dynamic symbols: the C ABI of fastrnn.h under FASTRNN_1, exactly; the internal
    C++ entry points of fastrnn's modules under FASTRNN_PRIVATE; nothing else."""
    public, private = set(), []
    for line in readelf("--dyn-syms", "--wide", fastrnn.get_library()).splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0][:-1].isdigit() or parts[6] in ("UND", "ABS"):
            continue
        assert parts[4] in ("GLOBAL", "WEAK", "LOCAL"), line
        if parts[4] == "LOCAL":
            continue
        name, _, version = parts[7].partition("@@")
        if version == "FASTRNN_1":
            public.add(name)
        elif version == "FASTRNN_PRIVATE":
            private.append(name)
        else:
            pytest.fail(f"exported without a fastrnn symbol version: {parts[7]}")
    assert public == header_functions()
    demangled = demangle(private)
    names = set()
    for d in demangled:
        m = re.search(r"fastrnn::(?:(?:Plan|Stream<\w+>|bf16|int8)::)?(~?\w+)(?:<[^<>]*>)?(?:\[abi:\w+\])?\(", d)
        assert m, f"unexpected private export {d}"
        names.add(m.group(1))
    assert names == PRIVATE
    assert len(private) <= 2 * len(PRIVATE) + 1  # templates: one instantiation per dtype; two constructor ABIs


@needs_readelf
def test_extensions_need_only_versioned_symbols():
    """What _C and _cuda import from the library carries a fastrnn symbol version."""
    for ext in EXTENSIONS:
        for line in readelf("--dyn-syms", "--wide", ext).splitlines():
            parts = line.split()
            if len(parts) >= 8 and parts[6] == "UND" and ("fastrnn" in parts[7]):
                assert parts[7].split("@")[-1] in ("FASTRNN_PRIVATE", "FASTRNN_1"), (ext, parts[7])
