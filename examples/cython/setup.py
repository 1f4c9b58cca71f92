"""Builds the stream_lstm extension against an installed fastrnn:

    python setup.py build_ext --inplace

Needs Cython, a C compiler with OpenMP (for prange) and fastrnn (headers, libfastrnn.so.1 and
fastrnn/cython/fastrnn.pxd all come with it).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

import fastrnn

ext = Extension(
    "stream_lstm",
    ["stream_lstm.pyx"],
    include_dirs=[fastrnn.get_include()],
    libraries=[":" + os.path.basename(fastrnn.get_library())],  # -l:libfastrnn.so.1
    library_dirs=[fastrnn.get_library_dir()],
    runtime_library_dirs=[fastrnn.get_library_dir()],
    extra_compile_args=["-fopenmp"],
    extra_link_args=["-fopenmp"],
)

setup(name="stream_lstm", ext_modules=cythonize([ext]))
