"""fastrnn: fused CPU kernels for RNN, LSTM and GRU — forward and BPTT — with the tools for
vanishing and exploding gradients. Documentation: docs/ (design: docs/design.md)."""
import importlib.machinery as _machinery
import os as _os
import sys as _sys


def _has_extension(package_dir):
    return any(_os.path.isfile(_os.path.join(package_dir, "_C" + suffix))
               for suffix in _machinery.EXTENSION_SUFFIXES)


def _hand_over_to_installed_copy():
    """This ``fastrnn/`` is a source checkout without the compiled extension (``python -m fastrnn``
    and ``python -c`` put the current directory first on sys.path, so a checkout shadows the
    installed package). Load the installed copy under this name instead, or say what to do."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    ours = _os.path.realpath(_os.path.dirname(here))
    others = [p for p in _sys.path if _os.path.realpath(p or _os.curdir) != ours]
    spec = _machinery.PathFinder.find_spec(__name__, others)
    if spec is None or not spec.submodule_search_locations or not _has_extension(spec.submodule_search_locations[0]):
        raise ImportError(
            f"fastrnn is being imported from its source tree ({here}), which has no compiled "
            "extension (fastrnn/_C), and no installed fastrnn was found on sys.path. Either install "
            "it: `pip install .` in the checkout (then import it from anywhere, the checkout "
            "included); or build it in place: `python setup.py build_ext --inplace` (or "
            "`pip install -e .`).", name=__name__, path=here)
    import importlib.util
    installed = importlib.util.module_from_spec(spec)
    _sys.modules[__name__] = installed  # the import statement returns what sys.modules holds
    try:
        spec.loader.exec_module(installed)
    except BaseException:
        del _sys.modules[__name__]
        raise


if not _has_extension(_os.path.dirname(_os.path.abspath(__file__))):
    _hand_over_to_installed_copy()
else:

    # Loads libscipy_openblas globally before the extension that links it (no rpath needed),
    # with one thread: fastrnn calls it on one thread per part (csrc/core/blas.h), and the server
    # threads OpenBLAS starts at load spin ~0.1 s on the cores the first multi-threaded steps
    # need (a first 2-thread call was 4-6x slower, and the pool backed off to one thread).
    # OPENBLAS_NUM_THREADS is read once, at load; the user's value (for NumPy's BLAS) is put back.
    _user_blas_threads = _os.environ.get("OPENBLAS_NUM_THREADS")
    _os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import scipy_openblas32 as _scipy_openblas32  # noqa: F401
    finally:
        if _user_blas_threads is None:
            del _os.environ["OPENBLAS_NUM_THREADS"]
        else:
            _os.environ["OPENBLAS_NUM_THREADS"] = _user_blas_threads

    from . import _C
    # The package in wings (docs/design.md, "Architecture"): core <- gradients <- toolkit; bench
    # and the torch front end on top. Public modules keep the names users import them by.
    from .core import cuda, functional, layers
    from .gradients import clip, diagnostics, init
    from .toolkit import callbacks, demo, losses, modules, optim, tasks, training
    for _module in (cuda, functional, layers, clip, diagnostics, init, callbacks, demo, losses, modules, optim, tasks,
                    training):  # `import fastrnn.init`, `from fastrnn.functional import ...`, old pickles
        _sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
    del _module
    from ._embed import get_include, get_library, get_library_dir
    from .core.layers import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, LiGRU, SLiGRU, quantize_dynamic
    from .gradients.diagnostics import gradcheck
    from .toolkit.modules import LastStep, Linear, Sequential
    from .toolkit.training import History, fit

    __version__ = _C.version  # from the FASTRNN_VERSION_* macros of fastrnn.h, the one source

    __all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU", "LiGRU", "SLiGRU", "functional", "init", "clip", "get_isa", "available_isas", "set_isa", "precision_features", "enable_amx",
               "set_num_threads", "get_num_threads", "get_include", "get_library", "get_library_dir", "__version__",
               "Linear", "LastStep", "Sequential", "losses", "optim", "tasks", "fit", "History", "callbacks",
               "diagnostics", "gradcheck", "cuda", "quantize_dynamic"]


    def get_isa():
        """The instruction set the kernels use now ("scalar", "avx2", ...)."""
        return _C.get_isa()


    def available_isas():
        """Instruction sets this CPU and build support, best first."""
        return list(_C.available_isas())


    def precision_features():
        """The reduced-precision instructions this CPU has (and its OS enables), by name.

        ``{"avx512_bf16": bool, "amx_bf16": bool, "avx512_vnni": bool, "avx_vnni": bool}``, apart
        from :func:`available_isas`, which names the float32 kernels' instruction set. bf16 products
        run on ``vdpbf16ps`` or on float32 FMAs (the same bits) with the avx2 and avx512 ISAs, int8
        products on VNNI where the CPU has it; otherwise a portable path gives the same bits, only
        slower (``python -m fastrnn info`` says which path runs).

        >>> sorted(precision_features())
        ['amx_bf16', 'avx512_bf16', 'avx512_vnni', 'avx_vnni']
        """
        return dict(_C.precision_features())


    def enable_amx(on=True):
        """Run bf16 products on AMX tiles (``tdpbf16ps``) while the float32 ISA is avx512; opt-in.

        The AMX path has not yet run on an AMX CPU (the machines fastrnn was measured on exposed
        none), so it stays off unless asked for here or with ``FASTRNN_AMX=1``; its tiling runs in
        the tests on a software model of the tiles (docs/precision.md). Returns True when AMX is on;
        when the CPU or its OS has no AMX, or Linux refuses the tile state (a small alternate
        signal stack, as pytest's faulthandler installs, makes it refuse), it warns why and returns
        False, and bf16 keeps its current path. ``enable_amx(False)`` turns it off.
        """
        why = _C.enable_amx(bool(on))
        if why:
            import warnings
            warnings.warn(f"fastrnn.enable_amx: {why}; bf16 stays on the {_C._bf16_path()} path", RuntimeWarning,
                          stacklevel=2)
        return _C.amx_enabled()


    def set_isa(name):
        """Force the kernels' instruction set (like FASTRNN_ISA=name); ValueError if unavailable."""
        _C.set_isa(str(name))


    def set_num_threads(n):
        """Threads used by fastrnn's kernels and its BLAS (default: FASTRNN_NUM_THREADS or all cores)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
        _C.set_num_threads(n)


    def get_num_threads():
        return _C.get_num_threads()


    def __getattr__(name):
        # fastrnn.torch imports torch: loaded on first access only, so `import fastrnn` stays torch-free.
        if name == "torch":
            import importlib
            return importlib.import_module(".torch", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


    set_num_threads(int(_os.environ.get("FASTRNN_NUM_THREADS", 0)) or (_os.cpu_count() or 1))
