"""fastrnn: fused CPU kernels for RNN, LSTM and GRU — forward and BPTT — with the tools for
vanishing and exploding gradients. See README.md and DESIGN.md."""
import os as _os

# Loads libscipy_openblas globally before the extension that links it (no rpath needed).
import scipy_openblas32 as _scipy_openblas32  # noqa: F401

from . import _C
from . import clip, cuda, functional, init
from ._embed import get_include, get_library_dir
from .layers import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM
from . import callbacks, losses, optim, tasks
from . import diagnostics
from .diagnostics import gradcheck
from .modules import LastStep, Linear, Sequential
from .training import History, fit

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU", "functional", "init", "clip", "get_isa", "available_isas", "set_isa",
           "set_num_threads", "get_num_threads", "get_include", "get_library_dir", "__version__",
           "Linear", "LastStep", "Sequential", "losses", "optim", "tasks", "fit", "History", "callbacks",
           "diagnostics", "gradcheck", "cuda"]


def get_isa():
    """The instruction set the kernels use now ("scalar", "avx2", ...)."""
    return _C.get_isa()


def available_isas():
    """Instruction sets this CPU and build support, best first."""
    return list(_C.available_isas())


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
