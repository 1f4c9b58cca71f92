"""The package's shape (docs/design.md, "Architecture"): wings that import downwards only, no
import cycle anywhere (imports inside functions included), and every public module still
importable by the name users know."""
import ast
import importlib
import os
import pickle

import pytest

import fastrnn

PACKAGE = os.path.dirname(fastrnn.__file__)
# Each wing may import the ones after it (and the top-level private modules: _C, _cuda, _embed).
WINGS = ["fastrnn.bench", "fastrnn.torch", "fastrnn.toolkit", "fastrnn.gradients", "fastrnn.core"]
# The one import against that order: the Li-GRU layers initialize W_hh with the orthogonal
# initializer (inside reset_parameters; gradients.init does not import the layers).
ALLOWED_UPWARD = {("fastrnn.core.layers", "fastrnn.gradients.init")}
PUBLIC = ["functional", "layers", "cuda", "init", "clip", "diagnostics", "callbacks", "modules", "optim", "losses",
          "training", "tasks", "demo", "torch"]


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield rel[:-len(".__init__")] if rel.endswith(".__init__") else rel, os.path.join(root, f)


def _imports(name, path):
    """fastrnn modules `name` imports, at module level or inside functions."""
    is_package = path.endswith("__init__.py")
    base = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fastrnn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                mod = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "fastrnn":
                continue
            for a in node.names:  # `from . import x`: x may be a module
                sub = f"{mod}.{a.name}"
                found.add(sub if any(sub == m for m, _ in MODULES) else mod)
    return {m for m in found if m != name}


MODULES = sorted(_modules())
NAMES = {m for m, _ in MODULES}
GRAPH = {m: {i for i in _imports(m, p) if i in NAMES} for m, p in MODULES}


def _wing(module):
    return next((w for w in WINGS if module == w or module.startswith(w + ".")), None)


EXTENSIONS = {"fastrnn._C", "fastrnn._cuda"}  # compiled; _cuda only where nvcc built it


def _relative_imports(name, path):
    """(target module, imported name) of every relative import of `name`."""
    base = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = base.split(".")
            mod = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                yield mod, a.name


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_relative_imports_resolve(name, path):
    """Each relative import names a module or extension that exists, or a name its module defines
    (an import inside a try, such as the optional CUDA extension's, would otherwise fail quietly)."""
    for mod, attr in _relative_imports(name, path):
        sub = f"{mod}.{attr}"
        if sub in NAMES or sub in EXTENSIONS:
            continue
        assert mod in NAMES, f"{name}: from {mod} import {attr}: no module {mod}"
        if mod != "fastrnn":  # the package's own names are made by its __init__, which imports this
            assert hasattr(importlib.import_module(mod), attr), f"{name}: {mod} has no {attr}"


def test_the_wings_exist():
    for wing in ("core", "gradients", "toolkit", "bench"):
        assert f"fastrnn.{wing}" in NAMES
    top = sorted(m for m in NAMES if m.count(".") == 1)
    assert top == ["fastrnn.__main__", "fastrnn._embed", "fastrnn._torch_cuda", "fastrnn.bench", "fastrnn.core",
                   "fastrnn.gradients", "fastrnn.toolkit", "fastrnn.torch"]


def test_no_import_cycle():
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(GRAPH[m]):
            if n == "fastrnn" or n.startswith("fastrnn.cython"):
                continue  # the package itself: its __init__ imports every wing
            if state.get(n) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m != "fastrnn" and m not in state:
            visit(m)


def test_wings_import_downwards():
    for m, deps in GRAPH.items():
        wm = _wing(m)
        if wm is None:
            continue
        for d in deps:
            wd = _wing(d)
            if wd is None or wd == wm or (m, d) in ALLOWED_UPWARD:
                continue
            assert WINGS.index(wd) > WINGS.index(wm), f"{m} imports {d}: {wm} may not use {wd}"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_modules_keep_their_names(name):
    if name == "torch":
        pytest.importorskip("torch")
    module = importlib.import_module(f"fastrnn.{name}")
    assert module is getattr(fastrnn, name) or name == "torch"
    assert importlib.import_module(f"fastrnn.{name}") is module


def test_pickles_of_the_flat_layout_still_load():
    """Objects pickled before the move name their classes fastrnn.layers.LSTM etc."""
    layer = fastrnn.LSTM(3, 4, rng=0)
    old = pickle.dumps(layer, protocol=2).replace(b"fastrnn.core.layers", b"fastrnn.layers")  # text GLOBAL opcodes
    assert b"fastrnn.layers" in old
    back = pickle.loads(old)
    assert type(back) is fastrnn.LSTM
    for k, v in layer.params.items():
        assert (back.params[k] == v).all()
