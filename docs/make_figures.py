"""Regenerates the figures and the demo table shown in README.md.

    python docs/make_figures.py            # writes docs/img/*.png and docs/img/demo-table.txt

Deterministic (seeded); the timings in the demo table depend on the machine.
"""
import os
import shutil
import subprocess
import sys

import numpy as np

import fastrnn

HERE = os.path.dirname(os.path.abspath(__file__))
IMG = os.path.join(HERE, "img")


def gradient_report_figure():
    """A 2-layer LSTM initialized 4x too large (saturated gates), loss on the last step: what
    record() shows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 16, 8)).astype(np.float32)
    lstm = fastrnn.LSTM(8, 64, num_layers=2, rng=0)
    for w in lstm.params.values():
        w *= 4.0
    with fastrnn.diagnostics.record(lstm) as rec:
        out, _ = lstm(x)
        g = np.zeros_like(out)
        g[-1] = 1.0
        lstm.backward(g)
    report = rec.report()
    report.plot(os.path.join(IMG, "gradient_report.png"))
    with open(os.path.join(IMG, "gradient_report.txt"), "w") as f:
        f.write(report.summary() + "\n")


def demo():
    out = os.path.join(IMG, "demo")
    res = subprocess.run([sys.executable, "-m", "fastrnn", "demo", "--quiet", "--out", out],
                         check=True, capture_output=True, text=True)
    table = [line for line in res.stdout.splitlines() if not line.startswith("wrote ")]
    with open(os.path.join(IMG, "demo-table.txt"), "w") as f:
        f.write("\n".join(table) + "\n")
    for name in ("loss.png", "gradient_flow.png", "saturation.png"):
        shutil.copy(os.path.join(out, name), os.path.join(IMG, f"demo_{name}"))
    shutil.rmtree(out)


if __name__ == "__main__":
    os.makedirs(IMG, exist_ok=True)
    gradient_report_figure()
    demo()
    print(open(os.path.join(IMG, "demo-table.txt")).read())
