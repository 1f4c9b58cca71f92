"""Where the files for embedding fastrnn live: the C ABI header, ``libfastrnn.so``, the
pkg-config and CMake package files (see docs/embed.md).

All of them sit inside the installed package, so a wheel is all a C, C++ or Cython build needs::

    <site-packages>/fastrnn/include/fastrnn/fastrnn.h     C ABI (plain C, extern "C")
    <site-packages>/fastrnn/lib/libfastrnn.so             the core, shared with fastrnn._C
    <site-packages>/fastrnn/lib/pkgconfig/fastrnn.pc      pkg-config fastrnn
    <site-packages>/fastrnn/lib/cmake/fastrnn/            find_package(fastrnn)
    <site-packages>/fastrnn/cython/fastrnn.pxd            cimport fastrnn.cython.fastrnn
"""
import os

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def get_include():
    """Directory to put on the include path of code that does ``#include <fastrnn/fastrnn.h>``.

    Returns
    -------
    str
        ``<fastrnn package>/include``.

    Examples
    --------
    >>> import os, fastrnn
    >>> os.path.isfile(os.path.join(fastrnn.get_include(), "fastrnn", "fastrnn.h"))
    True
    """
    return os.path.join(_PACKAGE, "include")


def get_library_dir():
    """Directory holding ``libfastrnn.so``: link with ``-L<dir> -lfastrnn``.

    The library is the one ``import fastrnn`` loads, so thread count and ISA settings are shared
    between Python and C callers of one process. It finds the BLAS of the scipy-openblas32 wheel
    through its run path ``$ORIGIN/../../scipy_openblas32/lib``.

    Returns
    -------
    str
        ``<fastrnn package>/lib``.

    Examples
    --------
    >>> import os, fastrnn
    >>> os.path.isfile(os.path.join(fastrnn.get_library_dir(), "libfastrnn.so"))
    True
    """
    return os.path.join(_PACKAGE, "lib")


def get_pkgconfig_dir():
    """Directory of ``fastrnn.pc``, for ``PKG_CONFIG_PATH``.

    Examples
    --------
    >>> import os
    >>> from fastrnn._embed import get_pkgconfig_dir
    >>> os.path.isfile(os.path.join(get_pkgconfig_dir(), "fastrnn.pc"))
    True
    """
    return os.path.join(_PACKAGE, "lib", "pkgconfig")


def get_cmake_dir():
    """Directory of ``fastrnnConfig.cmake``, for ``-Dfastrnn_DIR=`` (``find_package(fastrnn)``).

    Examples
    --------
    >>> import os
    >>> from fastrnn._embed import get_cmake_dir
    >>> os.path.isfile(os.path.join(get_cmake_dir(), "fastrnnConfig.cmake"))
    True
    """
    return os.path.join(_PACKAGE, "lib", "cmake", "fastrnn")


def compile_flags():
    """Compiler flags for C/C++ code using the C ABI (what ``pkg-config --cflags fastrnn`` gives).

    Examples
    --------
    >>> from fastrnn._embed import compile_flags, get_include
    >>> compile_flags() == ["-I" + get_include()]
    True
    """
    return ["-I" + get_include()]


def link_flags():
    """Linker flags for programs using the C ABI: the library and a run path to it, so the
    program finds ``libfastrnn.so`` without ``LD_LIBRARY_PATH``.

    Examples
    --------
    >>> from fastrnn._embed import link_flags
    >>> link_flags()[-1]
    '-lfastrnn'
    """
    return ["-L" + get_library_dir(), "-Wl,-rpath," + get_library_dir(), "-lfastrnn"]
