"""Build the CUDA backend's sources for the host emulator (csrc/cuda/emu.h) as a Python module.

The CUDA kernels, the driver and the pybind11 layer are compiled by the host C++ compiler with
FASTRNN_CUDA_EMULATE: every CUDA thread runs as a fiber, "device" memory is host memory. The
module has fastrnn._cuda's interface, so tests install it as fastrnn.cuda's backend and run the
whole CUDA code path on machines without a GPU. Built once per source state into build/ (or a
temporary directory when the checkout is read-only).
"""
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pybind11

import fastrnn

REPO = Path(__file__).resolve().parents[1]
CUDA_DIR = REPO / "csrc" / "cuda"
NAME = "fastrnn_cuda_emu"


def compiler():
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _sanitizers():
    """FASTRNN_SANITIZE=address,undefined (.ci/sanitize): instrumented like setup.py's build of the
    core, every report fatal; the emulator's fibers tell ASan about their stacks (emu.cpp)."""
    which = os.environ.get("FASTRNN_SANITIZE")
    return [f"-fsanitize={which}", "-fno-sanitize-recover=all", "-g", "-fno-omit-frame-pointer", "-fno-wrapv"] \
        if which else []


def _flags():
    return ["-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", "-DFASTRNN_CUDA_EMULATE",
            f"-DFASTRNN_CUDA_MODULE={NAME}", f"-I{REPO / 'csrc'}", f"-I{sysconfig.get_paths()['include']}",
            f"-I{pybind11.get_include()}", *_sanitizers()]


def build():
    """Path of the built module (compiled when the sources changed)."""
    cxx = compiler()
    sources = sorted(CUDA_DIR.glob("*.cu")) + [CUDA_DIR / "emu.cpp", CUDA_DIR / "module.cpp"]
    inputs = sorted(p for p in (REPO / "csrc").rglob("*") if p.suffix in (".h", ".cuh", ".cu", ".cpp"))
    libdir = fastrnn.get_library_dir()
    key = hashlib.sha256()
    for part in [cxx, sys.version, libdir, *_flags()]:
        key.update(part.encode())
    for p in inputs:
        key.update(p.read_bytes())
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    base = REPO / "build" if os.access(REPO, os.W_OK) else Path(tempfile.gettempdir())
    out = base / f"cuda-emulator-{key.hexdigest()[:16]}"
    target = out / f"{NAME}{suffix}"
    if target.exists():
        return target
    out.mkdir(parents=True, exist_ok=True)

    def compile_one(src):
        obj = out / (src.name + ".o")
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        r = subprocess.run([cxx, *_flags(), *lang, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"compiling {src} for the CUDA emulator failed:\n{r.stderr}")
        return str(obj)

    with ThreadPoolExecutor(2) as pool:
        objects = list(pool.map(compile_one, sources))
    tmp = out / f"{NAME}.{os.getpid()}.tmp"
    r = subprocess.run([cxx, "-shared", *_sanitizers(), *objects, "-o", str(tmp), f"-L{libdir}",
                        "-l:" + os.path.basename(fastrnn.get_library()), f"-Wl,-rpath,{libdir}"],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"linking the CUDA emulator failed:\n{r.stderr}")
    os.replace(tmp, target)  # atomic: concurrent test runs see a whole module or none
    return target


def load():
    spec = importlib.util.spec_from_file_location(NAME, build())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
