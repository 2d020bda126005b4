"""`_core.pyi` stays true to the compiled module: same classes, functions, methods."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import consensus_db
from consensus_db import _core

STUB = Path(consensus_db.__file__).with_name("_core.pyi")


def stub_names() -> dict:
    tree = ast.parse(STUB.read_text())
    names: dict = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            names[node.name] = members
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(node.annotation, ast.Name) and node.annotation.id == "TypeAlias":
                continue  # a stub-only alias (_Path, _Params), not a module attribute
            names[node.target.id] = None
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
            names["__all__"] = None
    return names


def public(obj) -> set:
    own = set(vars(obj))
    return {n for n in own if not n.startswith("_") or n in ("__enter__", "__exit__", "__new__")}


def test_stub_lists_exactly_the_module():
    stub = stub_names()
    module = {n for n in dir(_core) if not n.startswith("__") or n in ("__version__", "__all__")}
    assert set(stub) == module


def test_stub_classes_list_exactly_their_members():
    for name, members in stub_names().items():
        obj = getattr(_core, name)
        if inspect.isclass(obj):
            runtime = public(obj) - {"__new__"}
            # Private entry points the package itself calls (the lane submissions aio uses)
            # are stubbed for its type checking: each exists in the module.
            private = {m for m in members if m.startswith("_") and not m.startswith("__")}
            assert private <= set(vars(obj)), (name, private - set(vars(obj)))
            # __reduce__ and __eq__ are stubbed for type checkers; `vars()` of a PyO3
            # class lists them only where they are defined (stubtest checks them).
            assert members - private - {"__new__", "__reduce__", "__eq__"} == runtime - {"__reduce__", "__eq__"}, name


def test_package_ships_py_typed():
    assert STUB.with_name("py.typed").exists()
