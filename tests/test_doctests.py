"""Runs the examples in the docstrings of every fastrnn module (they are part of the docs)."""
import doctest
import importlib
import pkgutil

import pytest

import fastrnn

# Modules whose examples need an optional dependency, and that dependency.
NEEDS = {"fastrnn.torch": "torch", "fastrnn._torch_cuda": "torch"}

MODULES = sorted(m.name for m in pkgutil.walk_packages(fastrnn.__path__, "fastrnn.")
                 if m.name != "fastrnn.__main__" and not m.name.startswith("fastrnn.cython"))


@pytest.mark.parametrize("name", ["fastrnn"] + MODULES)
def test_docstring_examples(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"
