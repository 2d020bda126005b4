"""Checks that every repository path a tracked file names still exists.

    python docs/check_paths.py          # exits 1 listing each stale path (file:line: path)
    python docs/check_paths.py ROOT     # the same for another checkout

Two kinds of reference are read from every tracked text file (``git ls-files``):
  - path-like strings starting at a top-level directory (``src/...``, ``python/...``,
    ``tests/...``, ``benches/...``, ``docs/...``, ``examples/...``, ``scripts/...``,
    ``.ci/...``, ``.cargo/...``), resolved from the repository root, or from the naming
    file's own directory or one above it (``src/main.rs`` in ``examples/embed_host``);
    a ``*`` matches as a glob;
  - in Markdown, the target of every relative link (``[text](target#anchor)``), resolved
    from the page's directory, and its anchor against the target page's headings;
  - a test or function named after its file (``test_store.py::test_x``,
    ``src/conninfo.rs::redact``; a bare file name is one in ``tests/``): the file must
    define it.
A file that moved or was renamed leaves such a reference behind; tests/run_all.sh runs
this next to the other gates.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TOP = ("src", "python", "tests", "benches", "docs", "examples", "scripts", ".ci", ".cargo")
# A path starts at a top-level directory not preceded by a path character (so the
# `benches/...` inside `../benches/...` or inside a URL is not read on its own).
PATH = re.compile(r"(?<![\w./\-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./*\-]*[\w*])")
LINK = re.compile(r"\]\(([^()\s]+)\)")
ITEM = re.compile(r"(?<![\w./\-])((?:[\w.\-]+/)*[\w\-]+\.(?:py|rs))::(\w+)")
# Not read: binary and generated data, .gitignore (its lines name what must not exist),
# and this check and its test, which name missing paths as examples.
SKIP = (".lock", ".png", ".json", ".so", ".gitignore", "docs/check_paths.py", "tests/test_check_paths.py")
# Paths named on purpose though absent from this checkout, each with why.
EXPECTED_ABSENT = {
    "tests/stubtest_allowlist.txt": "run_all.sh says when to create it (what stubtest cannot see)",
}


def tracked_files(root: Path) -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    return [root / n for n in names.decode().split("\0") if n and not n.endswith(SKIP)]


def exists(root: Path, candidate: Path) -> bool:
    if "*" in str(candidate):
        return any(root.glob(str(candidate.relative_to(root))))
    return candidate.exists()


def resolves(root: Path, path: str, naming_file: Path) -> bool:
    if path in EXPECTED_ABSENT:
        return True
    bases = [root, *(p for p in naming_file.parents if root in p.parents)]
    return any(exists(root, base / path) for base in bases)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text.replace("`", "").replace("*", "")).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def link_problem(root: Path, target: str, page: Path) -> str | None:
    if re.match(r"[a-z][a-z+.-]*:", target):
        return None  # a URL
    file, _, anchor = target.partition("#")
    resolved = (page.parent / file).resolve() if file else page
    if root not in resolved.parents or str(resolved.relative_to(root)) in EXPECTED_ABSENT:
        return None
    if not resolved.exists():
        return f"link to {target}: no such file"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"link to {target}: no heading #{anchor} in {resolved.relative_to(root)}"
    return None


def item_problem(root: Path, file: str, name: str) -> str | None:
    path = root / file if "/" in file else root / "tests" / file
    if not path.exists():
        return f"{file}::{name}: no such file" if "/" in file or file.startswith("test_") else None
    if not re.search(rf"\b(?:def|fn|class|struct|enum|const|static|mod)\s+{re.escape(name)}\b", path.read_text()):
        return f"{file}::{name}: {path.relative_to(root)} defines no {name}"
    return None


def problems(root: Path, file: Path) -> list[str]:
    try:
        text = file.read_text()
    except (UnicodeDecodeError, FileNotFoundError):
        return []
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{file.relative_to(root)}:{number}"
        out += [f"{where}: {p}" for p in PATH.findall(line) if not resolves(root, p.rstrip("."), file)]
        if file.suffix == ".md":
            out += [f"{where}: {msg}" for t in LINK.findall(line) if (msg := link_problem(root, t, file))]
        out += [f"{where}: {msg}" for f, name in ITEM.findall(line) if (msg := item_problem(root, f, name))]
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0]).resolve() if argv else Path(__file__).resolve().parent.parent
    stale = [p for f in tracked_files(root) for p in problems(root, f)]
    for p in stale:
        print(p, file=sys.stderr)
    for path, why in EXPECTED_ABSENT.items():
        if (root / path).exists():
            print(f"note: {path} exists now; drop it from EXPECTED_ABSENT ({why})", file=sys.stderr)
    if stale:
        print(f"{len(stale)} stale path(s): fix the reference or the file's name", file=sys.stderr)
        return 1
    print("every repository path named in a tracked file exists")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
