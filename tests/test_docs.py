"""The documentation's sources in the repository: README.md is generated from docs/index.md,
the project points at nothing outside itself, and every page is reachable from the site's nav.
(The site itself builds with `mkdocs build --strict` in .ci/run, running every example.)"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "mkdocs.yml")),
                                reason="needs the source checkout (docs/, mkdocs.yml)")


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git and the checkout's history")
    return [f for f in out.splitlines() if os.path.isfile(os.path.join(ROOT, f))]


def test_readme_is_generated_from_the_front_page():
    res = subprocess.run([sys.executable, os.path.join(DOCS, "build_readme.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_readme_starts_with_the_two_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ['pip install ".[plot]" && python -m fastrnn demo', 'pip install ".[test]" && pytest -q']
    assert text.index("```bash") < text.index("\n## ")  # before any section


def test_nothing_points_outside_the_repository():
    outside = re.compile("|".join([r"\.\./" + "shared", "shared/" + "notes", r"(^|[^/\w])" + "DESIGN" + r"\.md"]))
    hits = []
    for name in tracked_files():
        if name.endswith((".png", ".so")):
            continue
        with open(os.path.join(ROOT, name), errors="replace") as f:
            for number, line in enumerate(f, 1):
                if outside.search(line):
                    hits.append(f"{name}:{number}: {line.strip()}")
    assert hits == []


def test_every_page_is_in_the_nav():
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        config = f.read()
    nav = set(re.findall(r"([\w/-]+\.md)\s*$", config.split("\nnav:", 1)[1].split("\nmarkdown_extensions:")[0], re.M))
    pages = {os.path.relpath(os.path.join(d, f), DOCS) for d, _, files in os.walk(DOCS) for f in files
             if f.endswith(".md")}
    assert pages == nav
