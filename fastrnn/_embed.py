"""Where the files for embedding fastrnn live: the C ABI header, ``libfastrnn.so.1``, the
pkg-config and CMake package files (see docs/embed.md).

All of them sit inside the installed package, so a wheel is all a C, C++ or Cython build needs::

    <site-packages>/fastrnn/include/fastrnn/fastrnn.h     C ABI (plain C, extern "C")
    <site-packages>/fastrnn/lib/libfastrnn.so.1           the core, shared with fastrnn._C
    <site-packages>/fastrnn/lib/pkgconfig/fastrnn.pc      pkg-config fastrnn
    <site-packages>/fastrnn/lib/cmake/fastrnn/            find_package(fastrnn)
    <site-packages>/fastrnn/cython/fastrnn.pxd            cimport fastrnn.cython.fastrnn
"""
import os

from . import _C

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# File name and soname: libfastrnn.so.<FASTRNN_ABI_VERSION>. There is no unversioned
# development symlink (a wheel cannot carry one), so builds link this file: -l:libfastrnn.so.1.
LIBRARY = f"libfastrnn.so.{_C.abi_version}"


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
    """Directory holding ``libfastrnn.so.1``: link with ``-L<dir> -l:libfastrnn.so.1``.

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
    >>> os.path.isfile(os.path.join(fastrnn.get_library_dir(), "libfastrnn.so.1"))
    True
    """
    return os.path.join(_PACKAGE, "lib")


def get_library():
    """Path of the shared library itself, ``<fastrnn package>/lib/libfastrnn.so.1`` (for
    ``ctypes.CDLL``, or to link by full path).

    Its soname is ``libfastrnn.so.<FASTRNN_ABI_VERSION>``; it exports the C ABI of ``fastrnn.h``
    under the symbol version ``FASTRNN_1``.

    Examples
    --------
    >>> import ctypes, fastrnn
    >>> lib = ctypes.CDLL(fastrnn.get_library())
    >>> lib.fastrnn_version_string.restype = ctypes.c_char_p
    >>> lib.fastrnn_version_string().decode() == fastrnn.__version__
    True
    """
    return os.path.join(get_library_dir(), LIBRARY)


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
    program finds ``libfastrnn.so.1`` without ``LD_LIBRARY_PATH``.

    Examples
    --------
    >>> from fastrnn._embed import link_flags
    >>> link_flags()[-1]
    '-l:libfastrnn.so.1'
    """
    return ["-L" + get_library_dir(), "-Wl,-rpath," + get_library_dir(), "-l:" + LIBRARY]
