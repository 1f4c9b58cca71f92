"""Build of the fastrnn C++ core (pybind11 extension fastrnn._C).

The extension links the BLAS of the scipy-openblas32 wheel (cblas symbols with the scipy_
prefix). At run time fastrnn/__init__.py imports scipy_openblas32 first, which loads that
library globally, so no rpath into the (temporary) build environment is needed.
"""
import glob
import os

import scipy_openblas32 as sob
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("FASTRNN_BUILD_JOBS", default=2).install()

sources = sorted(
    glob.glob("csrc/core/*.cpp")
    + glob.glob("csrc/kernels/*.cpp")
    + glob.glob("csrc/dispatch/*.cpp")
    + glob.glob("csrc/optim/*.cpp")
    + glob.glob("csrc/bindings/*.cpp")
)

extra_compile_args = ["-O3", "-fno-math-errno", "-pthread"]
if os.environ.get("FASTRNN_DEBUG"):
    extra_compile_args = ["-O0", "-g", "-pthread"]

ext = Pybind11Extension(
    "fastrnn._C",
    sources,
    include_dirs=["csrc", sob.get_include_dir()],
    library_dirs=[sob.get_lib_dir()],
    libraries=[sob.get_library()],
    depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),
    cxx_std=17,
    extra_compile_args=extra_compile_args,
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
