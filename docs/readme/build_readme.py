"""Assembles README.md from the sections in docs/readme/ (edit those, then run this).

    python docs/readme/build_readme.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["_head.md", "bench.md", "training.md", "init-clip.md", "torch.md", "variants.md", "cuda.md", "embed.md",
         "guarantees.md", "_tail.md"]

parts = [open(os.path.join(HERE, name)).read().strip() + "\n" for name in ORDER
         if os.path.exists(os.path.join(HERE, name))]
with open(os.path.join(HERE, "..", "..", "README.md"), "w") as f:
    f.write("\n".join(parts))
