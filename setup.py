"""Build of the fastrnn C++ core: one shared library, the pybind11 module on top of it, and the
files C, C++ and Cython code build against.

- fastrnn/lib/libfastrnn.so.N: the core (csrc/core, csrc/kernels, csrc/dispatch) and the C ABI
  (csrc/capi, header csrc/include/fastrnn/fastrnn.h), soname libfastrnn.so.N with N =
  FASTRNN_ABI_VERSION. No development symlink libfastrnn.so: a wheel cannot carry one, so
  everything links the versioned file (-l:libfastrnn.so.N). Exports follow
  csrc/capi/libfastrnn.map: the C ABI under FASTRNN_1, the C++ entry points of fastrnn's own
  modules under the internal node FASTRNN_PRIVATE, nothing else. It links the BLAS of the scipy-openblas32
  wheel (cblas symbols with the scipy_ prefix) and finds it at run time through its run path
  $ORIGIN/../../scipy_openblas32/lib (the wheel installed in the same site-packages); an in-place
  build adds the absolute lib dir of the scipy-openblas32 it was built with. Python never needs
  either: fastrnn/__init__.py imports scipy_openblas32 first, which loads it globally.
- fastrnn._C (csrc/bindings): the pybind11 module, linked against libfastrnn.so.N (run path
  $ORIGIN/lib), so Python and C callers in one process share one core (thread count, ISA).
- The version: the one source is the FASTRNN_VERSION_* macros of fastrnn.h; the package
  metadata, fastrnn.__version__ (through _C), pkg-config and CMake files all come from them.
- Package data: fastrnn/include/fastrnn/*.h, fastrnn/lib/pkgconfig/fastrnn.pc and
  fastrnn/lib/cmake/fastrnn/fastrnnConfig*.cmake (from csrc/capi/*.in, version from fastrnn.h),
  fastrnn/cython/*.pxd.
- fastrnn._cuda (csrc/cuda, optional): the CUDA backend, built when nvcc works. FASTRNN_CUDA=auto
  (default) builds it when nvcc is found (CUDA_HOME/CUDA_PATH, else PATH) and compiles a tiny .cu
  file, else warns and builds CPU-only; FASTRNN_CUDA=1 fails without it; FASTRNN_CUDA=0 skips it.
  FASTRNN_CUDA_ARCHS (default "80;90") lists the GPU architectures compiled to machine code, the
  last one also as PTX for newer GPUs. The CUDA runtime is linked statically, so importing fastrnn
  never needs a CUDA library, driver or GPU.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import scipy_openblas32 as sob
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import Extension, setup

ParallelCompile("FASTRNN_BUILD_JOBS", default=2).install()

CORE = "fastrnn.lib.libfastrnn"  # extension name of the shared core; file name fixed in BuildExt
HEADER_DIR = "csrc/include/fastrnn"


def header_macros():
    """The version macros of fastrnn.h: the one source of every version number."""
    with open(os.path.join(HEADER_DIR, "fastrnn.h")) as f:
        text = f.read()
    return {k: re.search(rf"#define FASTRNN_{k} (\d+)", text).group(1)
            for k in ("VERSION_MAJOR", "VERSION_MINOR", "VERSION_PATCH", "ABI_VERSION")}


MACROS = header_macros()
VERSION = "{VERSION_MAJOR}.{VERSION_MINOR}.{VERSION_PATCH}".format(**MACROS)
LIBRARY = f"libfastrnn.so.{MACROS['ABI_VERSION']}"  # file name and soname of the core

core_sources = sorted(
    glob.glob("csrc/core/*.cpp")
    + glob.glob("csrc/kernels/*.cpp")
    + glob.glob("csrc/dispatch/*.cpp")
    + glob.glob("csrc/capi/*.cpp")
)
# The optimizers' multi-tensor kernels serve only the Python API: they live in _C.
binding_sources = sorted(glob.glob("csrc/bindings/*.cpp") + glob.glob("csrc/optim/*.cpp"))
headers = sorted(h for h in glob.glob("csrc/**/*.h", recursive=True) if not h.startswith("csrc/cuda/"))

optimize = ["-O3", "-fno-math-errno", "-pthread"]
sanitizers = []  # link flags of a sanitized build
if os.environ.get("FASTRNN_DEBUG"):
    optimize = ["-O0", "-g", "-pthread"]
# FASTRNN_SANITIZE=address,undefined (any -fsanitize= list): an instrumented build for .ci/sanitize.
# Every report is fatal (-fno-sanitize-recover). Python must preload the runtime, see
# docs/guarantees.md: LD_PRELOAD=$(c++ -print-file-name=libasan.so).
if os.environ.get("FASTRNN_SANITIZE"):
    sanitizers = [f"-fsanitize={os.environ['FASTRNN_SANITIZE']}", "-fno-sanitize-recover=all"]
    # -fno-wrapv: Python's CFLAGS carry -fwrapv, which would hide signed overflow from UBSan.
    optimize = ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-wrapv", "-pthread"] + sanitizers

core = Extension(
    CORE,
    core_sources,
    language="c++",
    include_dirs=["csrc", "csrc/include", sob.get_include_dir()],
    library_dirs=[sob.get_lib_dir()],
    libraries=[sob.get_library()],
    # The map and the package-file templates are build inputs too (this also puts them in sdists).
    depends=headers + ["csrc/capi/libfastrnn.map"] + sorted(glob.glob("csrc/capi/*.in")),
    # Default visibility: the version script decides what is exported (the C ABI, and the C++
    # core for _C); no semantic interposition keeps calls inside the library direct.
    extra_compile_args=["-std=c++17", "-g0", "-fno-semantic-interposition", "-DFASTRNN_BUILDING"] + optimize,
    extra_link_args=[
        "-pthread",
        "-Wl,-soname," + LIBRARY,
        "-Wl,--version-script=csrc/capi/libfastrnn.map",
        "-Wl,--no-undefined",
        "-Wl,-Bsymbolic-functions",  # calls inside the library bind directly, never through the PLT
        "-Wl,-rpath,$ORIGIN/../../scipy_openblas32/lib",
    ] + sanitizers,
)

binding = Pybind11Extension(
    "fastrnn._C",
    binding_sources,
    include_dirs=["csrc", "csrc/include", sob.get_include_dir()],
    library_dirs=[sob.get_lib_dir()],
    libraries=[sob.get_library()],  # + the core, from the build directory (BuildExt)
    depends=headers,
    cxx_std=17,
    extra_compile_args=optimize,
    extra_link_args=["-pthread", "-Wl,-rpath,$ORIGIN/lib"] + sanitizers,
)


CUDA = "fastrnn._cuda"
CUDA_MODE = os.environ.get("FASTRNN_CUDA", "auto").strip().lower()
if CUDA_MODE not in ("auto", "0", "1"):
    raise SystemExit(f"FASTRNN_CUDA={CUDA_MODE!r}: expected auto, 0 or 1")
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
cuda = Pybind11Extension(
    CUDA,
    ["csrc/cuda/module.cpp"],  # + the nvcc objects of cuda_sources (BuildExt.build_cuda)
    include_dirs=["csrc"],
    depends=headers + cuda_sources + sorted(glob.glob("csrc/cuda/*.h") + glob.glob("csrc/cuda/*.cuh")),
    cxx_std=17,
    extra_compile_args=optimize,
    extra_link_args=["-pthread", "-Wl,-rpath,$ORIGIN/lib"],
)


def find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.path.join(os.environ.get(var, ""), "bin", "nvcc")
        if os.environ.get(var) and os.path.isfile(path):
            return path
    return shutil.which("nvcc")


def cuda_lib_dir(nvcc):
    """The toolkit's directory holding libcudart_static.a (nvcc may be a wrapper script, so the
    toolkit root comes from CUDA_HOME or the TOP= line of nvcc --dryrun)."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True).stderr
    roots += [line.split("TOP=", 1)[1].strip() for line in dry.splitlines() if "TOP=" in line]
    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in filter(None, roots):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            if os.path.isfile(os.path.join(root, sub, "libcudart_static.a")):
                return os.path.join(root, sub)
    raise RuntimeError(f"no libcudart_static.a found in the CUDA toolkit of {nvcc}")


def nvcc_flags():
    archs = [a for a in re.split(r"[;, ]+", os.environ.get("FASTRNN_CUDA_ARCHS", "80;90").strip()) if a]
    if not archs or not all(re.fullmatch(r"\d+a?", a) for a in archs):
        raise RuntimeError(f"FASTRNN_CUDA_ARCHS={os.environ.get('FASTRNN_CUDA_ARCHS')!r}: "
                           "expected numbers like '80;90'")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX: newer GPUs JIT it
    host = ["-ccbin", os.environ["CUDAHOSTCXX"]] if os.environ.get("CUDAHOSTCXX") else []
    return ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-Icsrc"] + host + flags


class BuildExt(build_ext):
    """Builds libfastrnn.so.N first (fixed name, no Python suffix), then _C against it, then writes
    the headers, pkg-config and CMake files next to the library."""

    def finalize_options(self):
        super().finalize_options()
        self.parallel = None  # _C links against the core: keep the extensions in order
        self.in_place = self.inplace  # setuptools builds in build_lib, then copies when in place
        if self.in_place:  # its core has an absolute run path: never let a wheel reuse it
            self.build_lib += "-inplace"
            self.build_temp += "-inplace"

    def get_ext_filename(self, fullname):
        if fullname.split(".")[-1] == CORE.split(".")[-1]:  # called with the full or the last name
            return os.path.join(*fullname.split(".")[:-1], LIBRARY)
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name == CORE and self.in_place and sob.get_lib_dir() not in " ".join(ext.extra_link_args):
            ext.extra_link_args.append("-Wl,-rpath," + sob.get_lib_dir())
        if ext.name == binding.name and ":" + LIBRARY not in ext.libraries:
            ext.library_dirs.insert(0, os.path.dirname(self.get_ext_fullpath(CORE)))
            ext.libraries.insert(0, ":" + LIBRARY)  # -l:libfastrnn.so.N (no unversioned symlink)
        super().build_extension(ext)

    def build_extensions(self):
        cuda_ext = next((e for e in self.extensions if e.name == CUDA), None)
        if cuda_ext is not None:  # built last (it links the core) and only if nvcc works
            self.extensions.remove(cuda_ext)
        super().build_extensions()
        if cuda_ext is not None and self.build_cuda(cuda_ext):
            self.extensions.append(cuda_ext)

    def build_cuda(self, ext):
        """nvcc-compiles csrc/cuda/*.cu (in parallel), then links fastrnn._cuda. Returns False
        (after a warning) when FASTRNN_CUDA=auto and nvcc is missing or fails."""
        try:
            nvcc = find_nvcc()
            if nvcc is None:
                raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
            flags = nvcc_flags()
            with tempfile.TemporaryDirectory() as tmp:  # does this nvcc work at all?
                probe = os.path.join(tmp, "probe.cu")
                with open(probe, "w") as f:
                    f.write("__global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }\n")
                if not self.dry_run:
                    subprocess.run([nvcc, "-c", probe, "-o", probe + ".o"] + flags, check=True, capture_output=True)
            out_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(out_dir, exist_ok=True)
            deps = ext.depends
            jobs = []
            for src in cuda_sources:
                obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                if not os.path.exists(obj) or max(os.path.getmtime(p) for p in deps) > os.path.getmtime(obj):
                    jobs.append([nvcc, "-c", src, "-o", obj] + flags)
                if obj not in ext.extra_objects:
                    ext.extra_objects.append(obj)
            for cmd in jobs:
                print("[cuda]", " ".join(cmd))
            if not self.dry_run:
                run = lambda cmd: subprocess.run(cmd, capture_output=True, text=True)  # noqa: E731
                with ThreadPoolExecutor(int(os.environ.get("FASTRNN_BUILD_JOBS", 2))) as pool:
                    for cmd, res in zip(jobs, pool.map(run, jobs)):
                        if res.returncode:
                            raise RuntimeError(f"nvcc failed on {cmd[2]}:\n{res.stdout}{res.stderr}")
            if "cudart_static" not in ext.libraries:
                ext.library_dirs += [os.path.dirname(self.get_ext_fullpath(CORE)), cuda_lib_dir(nvcc)]
                ext.libraries += [":" + LIBRARY, "cudart_static", "rt", "pthread", "dl"]
            super().build_extension(ext)
            return True
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            detail = exc.stderr.decode(errors="replace") if isinstance(exc, subprocess.CalledProcessError) else ""
            if CUDA_MODE == "1":
                raise RuntimeError(f"FASTRNN_CUDA=1 but the CUDA backend cannot be built: {exc}\n{detail}") from exc
            print(f"WARNING: building fastrnn without the CUDA backend (FASTRNN_CUDA=auto): {exc}\n{detail}",
                  file=sys.stderr)
            return False

    def copy_extensions_to_source(self):
        os.makedirs(os.path.join("fastrnn", "lib"), exist_ok=True)
        super().copy_extensions_to_source()

    def run(self):
        super().run()
        self.write_package_files(os.path.join(self.build_lib, "fastrnn"))
        if self.in_place:
            self.write_package_files("fastrnn")

    @staticmethod
    def write_package_files(package):
        include = os.path.join(package, "include", "fastrnn")
        os.makedirs(include, exist_ok=True)
        for h in glob.glob(os.path.join(HEADER_DIR, "*.h")):
            shutil.copy2(h, include)
        values = {"@VERSION@": VERSION, "@VERSION_MAJOR@": MACROS["VERSION_MAJOR"], "@LIBRARY@": LIBRARY}
        for template, dest in [("fastrnn.pc.in", "lib/pkgconfig/fastrnn.pc"),
                               ("fastrnnConfig.cmake.in", "lib/cmake/fastrnn/fastrnnConfig.cmake"),
                               ("fastrnnConfigVersion.cmake.in", "lib/cmake/fastrnn/fastrnnConfigVersion.cmake")]:
            with open(os.path.join("csrc", "capi", template)) as f:
                text = f.read()
            for key, value in values.items():
                text = text.replace(key, value)
            path = os.path.join(package, dest)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)


setup(
    version=VERSION,
    ext_modules=[core, binding] + ([cuda] if CUDA_MODE != "0" else []),
    cmdclass={"build_ext": BuildExt},
)
