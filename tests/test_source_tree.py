"""Importing fastrnn from inside a source checkout: `python -m fastrnn` and `python -c` put the
current directory first on sys.path, so a checkout's `fastrnn/` (no compiled extension) shadows
the installed package. The checkout hands over to the installed copy, or says what to do."""
import os
import shutil
import subprocess
import sys

import pytest

import fastrnn

INSTALLED = os.path.dirname(os.path.abspath(fastrnn.__file__))


@pytest.fixture
def checkout(tmp_path):
    """A copy of the package's Python sources only, as a fresh clone has them (no `_C`, no lib/)."""
    shutil.copytree(INSTALLED, tmp_path / "fastrnn",
                    ignore=shutil.ignore_patterns("*.so", "lib", "include", "__pycache__"))
    return tmp_path


def run(args, cwd):
    return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_inside_a_checkout_uses_the_installed_copy(checkout):
    res = run(["-c", "import sys, fastrnn, fastrnn.functional as F; "
                     "print(fastrnn.__file__); print(fastrnn._C.__file__); print(F.__file__); "
                     "print(sorted({m.__file__.rsplit('/fastrnn/', 1)[0] for n, m in sys.modules.items() "
                     "if n.startswith('fastrnn') and getattr(m, '__file__', None)}))"], checkout)
    assert res.returncode == 0, res.stderr
    init, ext, functional, roots = res.stdout.splitlines()
    assert init == os.path.join(INSTALLED, "__init__.py")
    assert os.path.dirname(ext) == INSTALLED and os.path.dirname(functional) == os.path.join(INSTALLED, "core")
    assert roots == repr([os.path.dirname(INSTALLED)])  # no module of the checkout stays loaded


def test_python_m_fastrnn_inside_a_checkout(checkout):
    res = run(["-m", "fastrnn", "info"], checkout)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"fastrnn {fastrnn.__version__}") and "isa:" in res.stdout


def test_checkout_without_an_installed_copy_says_what_to_do(checkout):
    # -S: no site-packages, so no installed fastrnn can be found (the check runs before numpy).
    res = run(["-S", "-c", "import fastrnn"], checkout)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastrnn is being imported from its source tree")
    assert "no compiled extension" in last and "pip install ." in last and "build_ext --inplace" in last
    assert "circular import" not in res.stderr
