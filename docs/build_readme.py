"""Writes README.md from the documentation site's front page, docs/index.md (edit that, then
run this). Links into the site become repository paths, so they work where the README is read.

    python docs/build_readme.py            # rewrite README.md
    python docs/build_readme.py --check    # exit 1 when README.md is not what docs/index.md gives
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTE = "<!-- Generated from docs/index.md by docs/build_readme.py: edit that file, not this one. -->\n"


def readme_text():
    with open(os.path.join(ROOT, "docs", "index.md")) as f:
        text = f.read()
    # (page.md), (page.md#anchor), (api/index.md), (img/x.png) -> (docs/...); absolute URLs stay.
    text = re.sub(r"\]\((?!https?://|#)([^)\s]+)\)", r"](docs/\1)", text)
    text = text.replace("](docs/changelog.md)", "](CHANGELOG.md)")  # the site page only includes it
    title, rest = text.split("\n", 1)
    return title + "\n" + NOTE + rest


def main(argv):
    path = os.path.join(ROOT, "README.md")
    text = readme_text()
    if "--check" in argv:
        with open(path) as f:
            if f.read() != text:
                print("README.md is out of date: run python docs/build_readme.py", file=sys.stderr)
                return 1
        return 0
    with open(path, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
