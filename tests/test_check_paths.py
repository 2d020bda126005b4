"""docs/check_paths.py, the stale-path gate: on a small git checkout it names every
reference to a file that is not there (a path from the root, a Markdown link, a link's
anchor) and passes a tree whose references all resolve; on this repository it passes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parent.parent / "docs" / "check_paths.py"


def run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True)


def checkout(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


def test_every_kind_of_stale_reference_is_named(tmp_path):
    root = checkout(
        tmp_path,
        {
            "src/sqlite/pool.rs": "// the pool, moved from src/\n",
            "Cargo.toml": "# The pool (src/pool.rs) is r2d2; the lane is src/sqlite/*.rs\n",
            "docs/page.md": "# A page\n\n## Some section\n\nSee [it](page.md#some-section), [that](../README.md),"
            " [gone](moved.md), [there](#no-such-heading) and `benches/*.py`.\n",
            "examples/host/Cargo.toml": "# builds src/main.rs\n",
            "examples/host/src/main.rs": "fn main() {}\n",
            "tests/test_a.py": "def test_here():\n    pass\n",
            "docs/tests.md": "Shown by `test_a.py::test_here`, `test_a.py::test_renamed`, `src/sqlite/pool.rs::open`.\n",
        },
    )
    result = run(root)
    assert result.returncode == 1
    assert sorted(result.stderr.splitlines()) == sorted(
        [
            "Cargo.toml:1: src/pool.rs",
            "docs/page.md:5: benches/*.py",
            "docs/page.md:5: link to ../README.md: no such file",
            "docs/page.md:5: link to moved.md: no such file",
            "docs/page.md:5: link to #no-such-heading: no heading #no-such-heading in docs/page.md",
            "docs/tests.md:1: test_a.py::test_renamed: tests/test_a.py defines no test_renamed",
            "docs/tests.md:1: src/sqlite/pool.rs::open: src/sqlite/pool.rs defines no open",
            "7 stale path(s): fix the reference or the file's name",
        ]
    )


def test_a_tree_whose_references_resolve_passes(tmp_path):
    root = checkout(
        tmp_path,
        {
            "README.md": "[the page](docs/page.md#some-section); `src/sqlite/pool.rs`\n",
            "src/sqlite/pool.rs": "// the pool\n",
            "docs/page.md": "# A page\n\n## Some section\n\nBack to [the README](../README.md); `src/sqlite/*.rs`.\n",
            "tests/test_a.py": "def test_here():\n    pass\n",
            "docs/tests.md": "Shown by `test_a.py::test_here` and `tests/test_a.py::test_here`.\n",
        },
    )
    result = run(root)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_this_repository_names_no_stale_path():
    result = run(CHECK.parent.parent)
    assert result.returncode == 0, result.stderr
