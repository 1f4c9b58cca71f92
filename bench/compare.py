#!/usr/bin/env python
"""Compare fastrnn with torch.nn, ONNX Runtime and NumPy — the runner of `python -m fastrnn bench`.

    python bench/compare.py --threads 1 2 --shapes A B F --json results.json
    python bench/compare.py --help

Uses the installed fastrnn, or this source checkout (extension built in place) when none is.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    try:
        import fastrnn  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fastrnn.bench.engine import main

    sys.exit(main())
