"""python -m fastrnn demo | bench | info | config"""
from __future__ import annotations

import argparse
import sys

import fastrnn
from .bench import engine as _bench
from .bench import streaming as _streaming
from .toolkit import demo as _demo


def demo(args):
    from .toolkit import demo as demo_module
    return demo_module.run(args)


def info(_args):
    import platform

    import scipy_openblas32 as sob

    print(f"fastrnn {fastrnn.__version__} (python {platform.python_version()}, {platform.machine()})")
    print(f"isa: {fastrnn.get_isa()} (available: {', '.join(fastrnn.available_isas())}; force with FASTRNN_ISA)")
    if "avx512" in fastrnn.available_isas():
        rows = fastrnn._C._microkernel_rows()
        print(f"avx512 microkernel: {rows} rows per register block ({'6 on Intel' if rows == 6 else '8 elsewhere'}"
              " by default; FASTRNN_MICROKERNEL_ROWS=6|8 overrides)")
    print(f"input product of long sequences: {fastrnn._C._input_gemm()} (the microkernel on Intel cores with"
          " avx512, else blas; FASTRNN_INPUT_GEMM=own|blas overrides)")
    features = fastrnn.precision_features()
    have = [name for name, on in features.items() if on]
    lacks = [name for name, on in features.items() if not on]
    print(f"precision features: {', '.join(have) or 'none'}" + (f" (not here: {', '.join(lacks)})" if lacks else ""))
    path = fastrnn._C._bf16_path()
    print("bf16 kernels: " + {"avx512_bf16": "avx512_bf16 (vdpbf16ps)",
                              "amx_bf16": "amx_bf16 (tdpbf16ps tiles, opt-in)",
                              "portable": "portable (emulated: the same bits as vdpbf16ps, slowly)"}.get(
        path, f"{path} (float32 FMAs on widened bf16: the same bits as vdpbf16ps)")
          + " (compute_dtype='bfloat16')")
    if features.get("amx_bf16") and path != "amx_bf16":
        print("AMX: on this CPU, off by default (not yet run on an AMX CPU): FASTRNN_AMX=1 or fastrnn.enable_amx()")
    path = fastrnn._C._int8_path()
    print("int8 kernels: " + (f"native ({path})" if path != "portable" else
                              "portable (emulated, same bits as avx512_vnni / avx_vnni, which need isa avx512 / avx2)"))
    print(f"threads: {fastrnn.get_num_threads()} (FASTRNN_NUM_THREADS / fastrnn.set_num_threads)")
    print(f"blas: scipy-openblas32 {sob.__version__} ({sob.get_openblas_config().strip()})")
    print("dtypes: float32, float64")
    print(f"C ABI: {fastrnn.get_library()}, headers in {fastrnn.get_include()}")
    try:
        import torch
        print(f"torch: {torch.__version__} (fastrnn.torch usable)")
    except ImportError:
        print("torch: not installed (pip install 'fastrnn[torch]' for fastrnn.torch)")
    try:
        import matplotlib
        print(f"matplotlib: {matplotlib.__version__} (plots available)")
    except ImportError:
        print("matplotlib: not installed (pip install 'fastrnn[plot]' for plots)")
    cuda = fastrnn.cuda.info()
    if not cuda["built"]:
        print(f"cuda: not built ({cuda['reason']})")
    elif cuda["reason"] is not None:
        print(f"cuda: built (runtime {cuda['runtime_version']}), not usable: {cuda['reason']}")
    else:
        devices = ", ".join(f"{name} (sm_{cc})" for name, cc in cuda["devices"])
        print(f"cuda: runtime {cuda['runtime_version']}, driver {cuda['driver_version']}, devices: {devices}")
    return 0


def config(args):
    """Print what a C, C++ or Cython build needs, one line per option, in the order given."""
    from . import _embed

    values = {"cflags": " ".join(_embed.compile_flags()), "libs": " ".join(_embed.link_flags()),
              "include_dir": _embed.get_include(), "library_dir": _embed.get_library_dir(),
              "library": _embed.get_library(),
              "pkgconfig_dir": _embed.get_pkgconfig_dir(), "cmake_dir": _embed.get_cmake_dir()}
    for key in args.items:
        print(values[key])
    return 0


def _run_bench(args):
    """The bench: the per-shape tables, or the streaming latencies with --streaming."""
    return (_streaming.run_args if args.streaming else _bench.run_args)(args)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastrnn", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="vanishing/exploding gradients: RNN vs LSTM vs GRU, clipping (see --help)",
                       description=_demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _demo.add_arguments(d)
    d.set_defaults(func=demo)
    b = sub.add_parser("bench", help="compare fastrnn with torch.nn, ONNX Runtime and NumPy (ms, GFLOP/s, speedups)")
    _bench.add_arguments(b).set_defaults(func=_run_bench)
    i = sub.add_parser("info", help="version, ISA, threads, BLAS")
    i.set_defaults(func=info)
    c = sub.add_parser("config", help="compiler/linker flags and paths for embedding fastrnn (C ABI)")
    for opt in ("cflags", "libs", "include-dir", "library-dir", "library", "pkgconfig-dir", "cmake-dir"):
        c.add_argument(f"--{opt}", dest="items", action="append_const", const=opt.replace("-", "_"))
    c.set_defaults(func=config, items=None)
    args = p.parse_args(argv)
    if args.cmd == "config" and not args.items:
        p.error("config: give at least one of --cflags --libs --include-dir --library-dir --library --pkgconfig-dir "
                "--cmake-dir")
    if args.cmd == "demo":
        _demo.check_arguments(d, args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
