"""MkDocs hook: every ```python block of a page runs while the site builds, so a documented
example that stops working fails `mkdocs build --strict`.

The blocks of one page run in order in one namespace (a page reads like a session), in a fresh
temporary directory, with matplotlib's Agg backend and their printed output (stdout, stderr) discarded. A block
whose first line is a comment starting with "# needs a CUDA GPU" is shown, not run (CI has no
GPU); one starting with "# needs SpeechBrain" runs where SpeechBrain is installed (CI installs
it) and is shown otherwise. Blocks of other languages (bash, c, cython) are not run here: tests/test_capi.py builds
and runs the C and Cython examples.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import textwrap
import traceback

log = logging.getLogger("mkdocs.plugins.fastrnn.examples")

FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
NOT_RUN = "# needs a CUDA GPU"
NEEDS_SPEECHBRAIN = "# needs SpeechBrain"


def _speechbrain_installed():
    try:
        from fastrnn.bench import speechbrain as _speechbrain
    except ImportError:
        return False
    return _speechbrain.version() is not None


def python_blocks(markdown):
    """(line number, source) of every ```python block, in page order."""
    for m in FENCE.finditer(markdown):
        yield markdown.count("\n", 0, m.start()) + 2, textwrap.dedent(m.group("code"))


def run_page(path, markdown):
    """Runs the page's blocks; returns a list of failure messages (empty when all ran)."""
    failures = []
    namespace = {"__name__": "__docs__"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fastrnn-docs-") as tmp:
        os.chdir(tmp)
        try:
            for line, code in python_blocks(markdown):
                if code.lstrip().startswith(NOT_RUN):
                    continue
                if code.lstrip().startswith(NEEDS_SPEECHBRAIN) and not _speechbrain_installed():
                    continue
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        exec(compile(code, f"{path}:{line}", "exec"), namespace)
                except Exception:  # noqa: BLE001 - every failure is reported, the build then stops
                    failures.append(f"{path}, the python block at line {line} failed:\n{traceback.format_exc()}")
                    break  # later blocks of the page build on this one
        finally:
            os.chdir(cwd)
            try:
                import matplotlib.pyplot as plt
                plt.close("all")
            except ImportError:
                pass
    return failures


def on_config(config, **kwargs):
    os.environ.setdefault("MPLBACKEND", "Agg")
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    for message in run_page(page.file.src_uri, markdown):
        log.warning(message)
    return markdown
