"""Build of the fastrnn C++ core: one shared library, the pybind11 module on top of it, and the
files C, C++ and Cython code build against.

- fastrnn/lib/libfastrnn.so: the core (csrc/core, csrc/kernels, csrc/dispatch) and the C ABI
  (csrc/capi, header csrc/include/fastrnn/fastrnn.h). It links the BLAS of the scipy-openblas32
  wheel (cblas symbols with the scipy_ prefix) and finds it at run time through its run path
  $ORIGIN/../../scipy_openblas32/lib (the wheel installed in the same site-packages); an in-place
  build adds the absolute lib dir of the scipy-openblas32 it was built with. Python never needs
  either: fastrnn/__init__.py imports scipy_openblas32 first, which loads it globally.
- fastrnn._C (csrc/bindings): the pybind11 module, linked against libfastrnn.so (run path
  $ORIGIN/lib), so Python and C callers in one process share one core (thread count, ISA).
- Package data: fastrnn/include/fastrnn/*.h, fastrnn/lib/pkgconfig/fastrnn.pc and
  fastrnn/lib/cmake/fastrnn/fastrnnConfig*.cmake (from csrc/capi/*.in, version from fastrnn.h),
  fastrnn/cython/*.pxd.
"""
import glob
import os
import re
import shutil

import scipy_openblas32 as sob
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import Extension, setup

ParallelCompile("FASTRNN_BUILD_JOBS", default=2).install()

CORE = "fastrnn.lib.libfastrnn"  # extension name of the shared core; file name fixed in BuildExt
HEADER_DIR = "csrc/include/fastrnn"

core_sources = sorted(
    glob.glob("csrc/core/*.cpp")
    + glob.glob("csrc/kernels/*.cpp")
    + glob.glob("csrc/dispatch/*.cpp")
    + glob.glob("csrc/capi/*.cpp")
)
# The optimizers' multi-tensor kernels serve only the Python API: they live in _C.
binding_sources = sorted(glob.glob("csrc/bindings/*.cpp") + glob.glob("csrc/optim/*.cpp"))
headers = sorted(glob.glob("csrc/**/*.h", recursive=True))

optimize = ["-O3", "-fno-math-errno", "-pthread"]
if os.environ.get("FASTRNN_DEBUG"):
    optimize = ["-O0", "-g", "-pthread"]

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
        "-Wl,-soname,libfastrnn.so",
        "-Wl,--version-script=csrc/capi/libfastrnn.map",
        "-Wl,--no-undefined",
        "-Wl,-Bsymbolic-functions",  # calls inside the library bind directly, never through the PLT
        "-Wl,-rpath,$ORIGIN/../../scipy_openblas32/lib",
    ],
)

binding = Pybind11Extension(
    "fastrnn._C",
    binding_sources,
    include_dirs=["csrc", sob.get_include_dir()],
    library_dirs=[sob.get_lib_dir()],
    libraries=[sob.get_library()],  # + fastrnn, from the build directory (BuildExt)
    depends=headers,
    cxx_std=17,
    extra_compile_args=optimize,
    extra_link_args=["-pthread", "-Wl,-rpath,$ORIGIN/lib"],
)


def header_version():
    with open(os.path.join(HEADER_DIR, "fastrnn.h")) as f:
        text = f.read()
    return [re.search(rf"#define FASTRNN_VERSION_{k} (\d+)", text).group(1) for k in ("MAJOR", "MINOR", "PATCH")]


class BuildExt(build_ext):
    """Builds libfastrnn.so first (fixed name, no Python suffix), then _C against it, then writes
    the headers, pkg-config and CMake files next to the library."""

    def finalize_options(self):
        super().finalize_options()
        self.parallel = None  # _C links against the core: keep the extensions in order
        self.in_place = self.inplace  # setuptools builds in build_lib, then copies when in place
        if self.in_place:  # its libfastrnn.so has an absolute run path: never let a wheel reuse it
            self.build_lib += "-inplace"
            self.build_temp += "-inplace"

    def get_ext_filename(self, fullname):
        if fullname.split(".")[-1] == CORE.split(".")[-1]:  # called with the full or the last name
            return os.path.join(*fullname.split(".")[:-1], "libfastrnn.so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name == CORE and self.in_place and sob.get_lib_dir() not in " ".join(ext.extra_link_args):
            ext.extra_link_args.append("-Wl,-rpath," + sob.get_lib_dir())
        if ext.name == binding.name and "fastrnn" not in ext.libraries:
            ext.library_dirs.insert(0, os.path.dirname(self.get_ext_fullpath(CORE)))
            ext.libraries.insert(0, "fastrnn")
        super().build_extension(ext)

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
        major, minor, patch = header_version()
        values = {"@VERSION@": f"{major}.{minor}.{patch}", "@VERSION_MAJOR@": major}
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
    ext_modules=[core, binding],
    cmdclass={"build_ext": BuildExt},
    package_data={"fastrnn": ["cython/*.pxd"]},
)
