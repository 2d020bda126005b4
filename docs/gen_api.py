"""Generates docs/api.md, the API reference, from the installed package's docstrings,
and the docstrings of python/consensus_db/_core.pyi from the same source.

    python docs/gen_api.py           # writes docs/api.md and the stub's docstrings
    python docs/gen_api.py --check   # exits 1 if either is stale or a docstring is missing

The Rust methods' docstrings are their ``///`` comments (PyO3 exposes them as ``__doc__``)
and their signatures are the text signatures the stubs are checked against; the Python
layer's are its own. Each Rust docstring has that one home: the stub carries a copy, so
that an editor shows what ``help()`` and this page say. tests/run_all.sh runs
``--check``, so both are built in CI.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import consensus_db
from consensus_db import _core, aio, errors, replication, results, retry

OUT = Path(__file__).with_name("api.md")
STUB = Path(__file__).resolve().parents[1] / "python" / "consensus_db" / "_core.pyi"
SIMPLE = (type(None), bool, int, float, str, type(Ellipsis))
missing: list[str] = []


def stub_signatures() -> dict[str, str]:
    """``Class.method`` -> the stub's signature text (the Rust methods' text signatures
    carry names and defaults, not types: the stub, checked by stubtest, has those)."""
    tree = ast.parse(Path(consensus_db.__file__).with_name("_core.pyi").read_text())
    found: dict[str, str] = {}

    def text(fn: ast.FunctionDef) -> str:
        args = fn.args
        if args.args and args.args[0].arg in ("self", "cls"):
            args = ast.arguments(
                posonlyargs=args.posonlyargs,
                args=args.args[1:],
                vararg=args.vararg,
                kwonlyargs=args.kwonlyargs,
                kw_defaults=args.kw_defaults,
                kwarg=args.kwarg,
                defaults=args.defaults,  # they belong to the last parameters: self never has one
            )
        out = f"({ast.unparse(args)})"
        return out + (f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else "")

    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f"{node.name}.{item.name}"] = text(item)
        elif isinstance(node, ast.FunctionDef):
            found[node.name] = text(node)
    return found


STUB_SIGNATURES = stub_signatures()


def default_text(value: Any) -> str:
    if value is consensus_db.DEFAULT_RETRY:
        return "DEFAULT_RETRY"
    if isinstance(value, SIMPLE):
        return "..." if value is Ellipsis else repr(value)
    if type(value).__name__ == "_HAS_DEFAULT_FACTORY_CLASS":  # dataclasses.field(default_factory=...)
        return "<factory>"
    if callable(value):
        return getattr(value, "__qualname__", "<function>")
    return f"<{type(value).__name__}>"


def annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def signature(obj: Any, *, drop_self: bool = False) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts: list[str] = []
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    star_done = False
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star_done = "*" + text, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        if p.annotation is not p.empty:
            text += f": {annotation_text(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {default_text(p.default)}" if p.annotation is not p.empty else f"={default_text(p.default)}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    out = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty:
        out += f" -> {annotation_text(sig.return_annotation)}"
    return out


def doc(name: str, obj: Any) -> str:
    text = inspect.getdoc(obj) or ""
    # A class without its own docstring inherits object's: not a docstring of ours.
    if not text or text == inspect.getdoc(object) or text.startswith("Initialize self."):
        missing.append(name)
        return "*(undocumented)*"
    return text


def is_rust(cls: type) -> bool:
    return getattr(_core, cls.__name__, None) is cls


def own_members(cls: type, bases: tuple[type, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Public members defined by ``cls`` or one of ``bases`` (the Rust base of Store)."""
    seen: set[str] = set()
    for owner in (cls, *bases):
        # PyO3 classes list their members in hash order: sort for a stable page.
        items = sorted(vars(owner).items()) if is_rust(owner) else vars(owner).items()
        for name, value in items:
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            yield name, value


def member_entry(owner: str, name: str, value: Any, stub_owner: str = "") -> list[str]:
    qualified = f"{owner}.{name}"
    if isinstance(value, property) or type(value).__name__ == "getset_descriptor":
        return [f"- **`{name}`** (property): {doc(qualified, value).splitlines()[0]}"]
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if not callable(value):
        return []
    shown = STUB_SIGNATURES.get(f"{stub_owner}.{name}") if stub_owner else None
    prefix = "async " if inspect.iscoroutinefunction(value) else ""
    if prefix and shown is None and owner == "consensus_db.aio.AsyncStore":
        # A generated twin: the parameters and result of the sync method it mirrors.
        if name in vars(consensus_db.Store):
            shown = signature(getattr(consensus_db.Store, name), drop_self=True)
        else:
            shown = STUB_SIGNATURES.get(f"Database.{name}")
    lines = [f"#### `{prefix}{qualified}{shown or signature(value, drop_self=True)}`", "", doc(qualified, value), ""]
    return lines


def class_section(title: str, cls: type, bases: tuple[type, ...] = ()) -> list[str]:
    lines = [f"### `{title}`", "", doc(title, cls), ""]
    properties: list[str] = []
    methods: list[str] = []
    for name, value in own_members(cls, bases):
        owner = next((c for c in (cls, *bases) if name in vars(c)), cls)
        stub_owner = owner.__name__ if is_rust(owner) else ""
        entry = member_entry(title, name, value, stub_owner)
        (properties if entry and entry[0].startswith("- ") else methods).extend(entry)
    if properties:
        lines += ["Attributes:", "", *properties, ""]
    return lines + methods


def typed_dict_section(cls: type) -> list[str]:
    title = f"consensus_db.results.{cls.__name__}"
    lines = [f"### `{cls.__name__}`", "", doc(title, cls), ""]
    hints = {}
    for klass in reversed(cls.__mro__):
        hints.update(getattr(klass, "__annotations__", {}))
    lines += [f"- `{key}`: `{annotation_text(value)}`" for key, value in hints.items()]
    return [*lines, ""]


def function_section(title: str, fn: Callable[..., Any]) -> list[str]:
    return [f"### `{title}{signature(fn)}`", "", doc(title, fn), ""]


def render() -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `docs/gen_api.py` (checked in CI by `tests/run_all.sh`);",
        "do not edit by hand. Types: the package ships `py.typed` and `_core.pyi`, so",
        "`mypy --strict` sees every signature below.",
        "",
        "## Opening a store",
        "",
        *function_section("consensus_db.connect", consensus_db.connect),
        "## `Store`: the sync API",
        "",
        *class_section("consensus_db.Store", consensus_db.Store, (_core.Database,)),
        "## Transactions",
        "",
        *class_section("consensus_db.Transaction", _core.Transaction),
        *class_section("consensus_db.Savepoint", _core.Savepoint),
        "## Results",
        "",
        *class_section("consensus_db.Artifact", _core.Artifact),
        *class_section("consensus_db.Synthesis", _core.Synthesis),
        *class_section("consensus_db.ExtractionFailure", _core.ExtractionFailure),
        *class_section("consensus_db.SpawnInfo", results.SpawnInfo),
        *class_section("consensus_db.Rows", results.Rows),
        "## Reports (`TypedDict`s: plain dicts at runtime)",
        "",
    ]
    for name in results.__all__:
        obj = getattr(results, name)
        if isinstance(obj, type) and typing.is_typeddict(obj):
            out += typed_dict_section(obj)
    out += [
        "## Value sets (`Literal` types)",
        "",
        *[
            f"- `{n}` = `{annotation_text(getattr(results, n))}`"
            for n in ("PhaseType", "Behavior", "Source", "AutoVacuum")
        ],
        "",
        *function_section("consensus_db.results.auto_vacuum_name", results.auto_vacuum_name),
        "## The async twin: `consensus_db.aio`",
        "",
        doc("consensus_db.aio", aio),
        "",
        *function_section("consensus_db.aio.connect", aio.connect),
        *class_section("consensus_db.aio.AsyncStore", aio.AsyncStore),
        *class_section("consensus_db.aio.AsyncTransaction", aio.AsyncTransaction),
        *class_section("consensus_db.aio.AsyncSavepoint", aio.AsyncSavepoint),
        "## Retry: `consensus_db.retry`",
        "",
        doc("consensus_db.retry", retry),
        "",
    ]
    for name in retry.__all__:
        obj = getattr(retry, name)
        title = f"consensus_db.retry.{name}"
        if isinstance(obj, type) and issubclass(obj, enum.Enum):
            out += [f"### `{title}`", "", doc(title, obj), "", *[f"- `{m.name}` = `{m.value!r}`" for m in obj], ""]
        elif isinstance(obj, type) and dataclasses.is_dataclass(obj):
            out += [f"### `{title}{signature(obj)}`", "", doc(title, obj), ""]
            out += [line for n, v in own_members(obj) for line in member_entry(title, n, v)]
        elif isinstance(obj, type):
            out += class_section(title, obj)
        else:
            out += function_section(title, obj)
    out += ["## Replication: `consensus_db.replication`", "", doc("consensus_db.replication", replication), ""]
    for name in replication.__all__:
        obj = getattr(replication, name)
        title = f"consensus_db.replication.{name}"
        if isinstance(obj, type):
            out += class_section(title, obj)
        elif callable(obj):
            out += function_section(title, obj)
        else:
            out += [f"- `{title}` = `{obj!r}`", ""]
    out += ["## Errors: `consensus_db.errors`", "", doc("consensus_db.errors", errors), ""]
    out += ["| class | base | retryable | meaning |", "|---|---|---|---|"]
    for name in errors.__all__:
        cls = getattr(errors, name)
        meaning = " ".join(doc(name, cls).split())
        out.append(f"| `{name}` | `{cls.__mro__[1].__name__}` | {cls.retryable} | {meaning} |")
    out += ["", "## Constants", ""]
    out += [f"- `consensus_db.DEFAULTS` = `{dict(sorted(_core.DEFAULTS.items()))!r}`"]
    out += [
        f"- `consensus_db.{n}` = `{getattr(consensus_db, n)!r}`"
        for n in ("DEFAULT_SCHEMA_VERSION", "LATEST_SCHEMA_VERSION")
    ]
    return "\n".join(out).rstrip() + "\n"


def docstring_lines(text: str, indent: str) -> list[str]:
    """``text`` as the lines of a docstring statement indented by ``indent``."""
    body = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').splitlines()
    body[0] = f'{indent}""" {body[0]}' if body[0].startswith('"') else f'{indent}"""{body[0]}'
    body[1:] = [f"{indent}{line}" if line.strip() else "" for line in body[1:]]
    body[-1] += ' """' if body[-1].endswith('"') else '"""'
    return [line + "\n" for line in body]


def stub_with_runtime_docs() -> tuple[str, list[str]]:
    """The stub with the docstring of every class, method and property that the module
    documents replaced by the module's own, and the names whose stub docstring differed."""
    source = STUB.read_text()
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []
    changed: list[str] = []

    def sync(name: str, node: ast.ClassDef | ast.FunctionDef, runtime: Any) -> None:
        want = inspect.getdoc(runtime) if runtime is not None else None
        body = node.body
        first = body[0] if body else None
        has = (
            isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
        )
        if not want or not has or want in (inspect.getdoc(object), inspect.getdoc(object.__new__)):
            return
        stmt = body[0]
        start, end = stmt.lineno - 1, stmt.end_lineno or stmt.lineno
        new = docstring_lines(want, " " * stmt.col_offset)
        if lines[start:end] != new:
            changed.append(name)
            edits.append((start, end, new))

    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            cls = getattr(_core, node.name, None)
            sync(node.name, node, cls)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and cls is not None:
                    sync(f"{node.name}.{item.name}", item, vars(cls).get(item.name))
        elif isinstance(node, ast.FunctionDef):
            sync(node.name, node, getattr(_core, node.name, None))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = new
    return "".join(lines), changed


def main(argv: list[str]) -> int:
    text = render()
    stub, drifted = stub_with_runtime_docs()
    if missing:
        print("missing docstrings:\n  " + "\n  ".join(missing), file=sys.stderr)
    if "--check" in argv:
        if missing:
            return 1
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run `python docs/gen_api.py` and commit it", file=sys.stderr)
            return 1
        if drifted:
            print(
                f"{STUB}: {len(drifted)} docstrings differ from the module's (the Rust ///): "
                f"{', '.join(drifted)}; run `python docs/gen_api.py` and commit it",
                file=sys.stderr,
            )
            return 1
        print(f"{OUT}: up to date, every public function documented; the stub's docstrings are the module's")
        return 0
    OUT.write_text(text)
    STUB.write_text(stub)
    print(f"wrote {OUT} ({len(text.splitlines())} lines) and {len(drifted)} docstrings of {STUB.name}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
