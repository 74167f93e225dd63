"""The public API is what docs/reference/api.md says, and all of it is documented.

The page's table names the public modules. Each must import and declare
``__all__``; every name in it must exist and be documented; every public
method and property of every public class must have a docstring; what a public
call returns must be a class some public module exports; and the code in
README.md, docs/ and the public modules' docstring examples may import only
public names from public modules.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.docs.test_docs import PAGES, ROOT, _python_blocks

REFERENCE = ROOT / "docs" / "reference" / "api.md"
PUBLIC = re.findall(r"^\| `(unbundled[\w.]*)` \|", REFERENCE.read_text(), re.MULTILINE)
# How limits are documented: by their name (docs/reference/api.md says so).
LIMIT_NAME = re.compile(r"[a-z][a-z0-9_]*_(max|min|default)")


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def _is_ours(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "unbundled" or module.startswith("unbundled.")


def _own_doc(obj: object) -> str:
    """``obj``'s own docstring, not one generated for it or inherited from a base
    outside unbundled (a NamedTuple's or dataclass's ``Name(field, ...)``, or
    msgspec.Struct's docstring)."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        generated = doc.startswith(f"{obj.__name__}(")
        return "" if generated else doc.strip()
    return (getattr(obj, "__doc__", None) or "").strip()


def _public_classes() -> Iterator[tuple[str, type]]:
    seen: set[type] = set()
    for module_name in PUBLIC:
        module = _module(module_name)
        for name in module.__all__:
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and _is_ours(obj) and obj not in seen:
                seen.add(obj)
                yield f"{module_name}.{name}", obj


def _members(cls: type) -> Iterator[tuple[str, str, Any]]:
    """``(name, defining class, raw attribute)`` of each public method and
    property of ``cls``, including those it inherits from our own bases."""
    done: set[str] = set()
    for klass in inspect.getmro(cls):
        if not _is_ours(klass):
            continue
        for name, attribute in vars(klass).items():
            if name.startswith("_") or name in done:
                continue
            done.add(name)
            raw = attribute
            if isinstance(attribute, staticmethod | classmethod):
                raw = attribute.__func__
            if isinstance(raw, property) or inspect.isfunction(raw):
                yield name, klass.__name__, raw


def _overridden_doc(cls: type, name: str) -> str:
    """The docstring of ``name`` in one of our base classes of ``cls``: an
    override without a docstring keeps the contract of the method it overrides."""
    for klass in inspect.getmro(cls):
        raw = vars(klass).get(name) if _is_ours(klass) else None
        if isinstance(raw, staticmethod | classmethod):
            raw = raw.__func__
        if raw is not None and _own_doc(raw):
            return _own_doc(raw)
    return ""


def _protocols() -> list[type]:
    return [
        cls
        for _, cls in _public_classes()
        if getattr(cls, "_is_protocol", False) and cls.__name__.endswith("Backend")
    ]


def _protocol_doc(cls: type, name: str) -> str:
    """The docstring of ``name`` in a backend protocol that ``cls`` implements
    (has every method of): a backend's methods are documented there."""
    for protocol in _protocols():
        methods = [m for m, _, _ in _members(protocol)]
        if name in methods and all(hasattr(cls, m) for m in methods):
            return _own_doc(getattr(protocol, name))
    return ""


def test_the_reference_page_lists_the_public_modules() -> None:
    assert "unbundled" in PUBLIC and "unbundled.eventstore" in PUBLIC, PUBLIC
    private = [name for name in PUBLIC if any(p.startswith("_") for p in name.split("."))]
    assert not private, f"docs/reference/api.md lists private modules: {private}"


@pytest.mark.parametrize("module_name", PUBLIC)
def test_public_module_declares_what_exists(module_name: str) -> None:
    module = _module(module_name)
    assert _own_doc(module), f"{module_name} has no docstring"
    names = getattr(module, "__all__", None)
    assert isinstance(names, list | tuple), f"{module_name} has no __all__"
    assert len(set(names)) == len(names), f"{module_name}.__all__ repeats a name"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what does not exist: {missing}"
    # `from .x import Y as Y` is the house's way to say "re-exported": each
    # such name must be in __all__ too (ThreadFailed once was not).
    source = inspect.getsource(module)
    reexported = {
        alias.asname
        for node in ast.parse(source).body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname is not None and alias.asname == alias.name
    }
    unlisted = sorted(reexported - set(names))
    assert not unlisted, f"{module_name} re-exports names missing from __all__: {unlisted}"


def _documented_data(module_name: str, name: str) -> bool:
    """A constant is documented Sphinx's way: a ``#:`` comment above its
    assignment, or a string right after it, in the module that defines it
    (found by following ``from x import name`` from ``module_name``)."""
    path = Path(_module(module_name).__file__ or "")
    source = path.read_text()
    lines = source.splitlines()
    body = ast.parse(source).body
    for i, node in enumerate(body):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    package = (
                        module_name
                        if path.name == "__init__.py"
                        else module_name.rpartition(".")[0]
                    )
                    source_module = importlib.util.resolve_name(
                        "." * node.level + (node.module or ""), package
                    )
                    return _documented_data(source_module, alias.name)
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        after = body[i + 1] if i + 1 < len(body) else None
        string_after = (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        )
        return above.startswith("#:") or string_after
    return False


@pytest.mark.parametrize("module_name", PUBLIC)
def test_public_names_have_docstrings(module_name: str) -> None:
    module = _module(module_name)
    undocumented = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name, None)
        if inspect.ismodule(obj):
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            documented = bool(_own_doc(obj))
        elif module_name == "unbundled.limits":
            documented = bool(LIMIT_NAME.fullmatch(name))
        else:
            documented = _documented_data(module_name, name)
        if not documented:
            undocumented.append(name)
    assert not undocumented, f"{module_name}: no docstring for {undocumented}"


def test_public_methods_and_properties_have_docstrings() -> None:
    undocumented = []
    for qualname, cls in _public_classes():
        for name, owner, raw in _members(cls):
            if _own_doc(raw) or _overridden_doc(cls, name) or _protocol_doc(cls, name):
                continue
            undocumented.append(
                f"{qualname}.{name}" + ("" if owner == cls.__name__ else f" ({owner})")
            )
    assert not undocumented, "no docstring:\n  " + "\n  ".join(sorted(undocumented))


def _exported_classes() -> dict[str, type]:
    """Every public class, by name (to resolve annotations written as strings)."""
    return {cls.__name__: cls for _, cls in _public_classes()}


def _returned_classes(annotation: Any) -> Iterator[type]:
    """Our classes that a return annotation names (inside unions and generics too)."""
    if inspect.isclass(annotation) and _is_ours(annotation):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _returned_classes(argument)


def _public_callables() -> Iterator[tuple[str, Any]]:
    for qualname, cls in _public_classes():
        for name, _, raw in _members(cls):
            yield f"{qualname}.{name}", raw.fget if isinstance(raw, property) else raw
    for module_name in PUBLIC:
        module = _module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) and _is_ours(obj):
                yield f"{module_name}.{name}", obj


def test_what_public_calls_return_is_public() -> None:
    # A caller must be able to import (and read the docs of) what it gets back.
    names = _exported_classes()
    public = set(names.values())
    hidden = []
    for qualname, function in _public_callables():
        returned = typing.get_type_hints(function, localns=names).get("return")
        hidden += [
            f"{qualname} -> {cls.__module__}.{cls.__qualname__}"
            for cls in _returned_classes(returned)
            if cls not in public
        ]
    assert not hidden, "returns a class no public module exports:\n  " + "\n  ".join(hidden)


def _docstring_examples() -> Iterator[tuple[str, str]]:
    """The ``>>>`` examples of the public modules' docstrings, per module and member."""
    parser = doctest.DocTestParser()
    finder = doctest.DocTestFinder(parser=parser, exclude_empty=True)
    seen: set[str] = set()
    for module_name in PUBLIC:
        module = _module(module_name)
        tests = finder.find(module)
        for name in module.__all__:
            obj = getattr(module, name, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and _is_ours(obj):
                tests += finder.find(obj, f"{module_name}.{name}", module=False)
        for test in tests:
            if test.name not in seen:
                seen.add(test.name)
                yield test.name, "".join(example.source for example in test.examples)


def _code() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for number, block in enumerate(_python_blocks(page), 1):
            yield f"{page.relative_to(ROOT)} block {number}", block
    yield from _docstring_examples()


def _imports(tree: ast.AST) -> Iterator[tuple[str, str | None]]:
    """``(module, name)`` for each name the code takes from unbundled:
    ``from m import name``, ``import m`` (name None) and ``unbundled.x.Y``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "unbundled":
            for alias in node.names:
                yield node.module or "", alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "unbundled":
                    yield alias.name, None
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.split(".")[0] == "unbundled" and dotted.count("."):
                yield _split_attribute(dotted)


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _split_attribute(dotted: str) -> tuple[str, str | None]:
    """``unbundled.consistency.KV.open`` is the name ``KV`` of
    ``unbundled.consistency``: the longest prefix that is a module."""
    parts = dotted.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in sys.modules or ".".join(parts[:end]) in PUBLIC:
            return ".".join(parts[:end]), parts[end]
    return dotted, None


def _refusal(module_name: str, name: str | None) -> str | None:
    """Why code may not import ``name`` from ``module_name``, or None."""
    if module_name not in PUBLIC:
        return f"{module_name} is not a public module (docs/reference/api.md)"
    if name is None or name == "*" or name.startswith("__") or f"{module_name}.{name}" in PUBLIC:
        return None
    if name not in _module(module_name).__all__:
        return f"{name} is not in {module_name}.__all__"
    return None


def test_docs_import_only_public_names() -> None:
    refused = []
    for where, code in _code():
        for module_name, name in _imports(ast.parse(code)):
            reason = _refusal(module_name, name)
            if reason:
                refused.append(f"{where}: {reason}")
    assert not refused, "\n".join(refused)


def test_applies_is_exported_beside_aggregate_and_repository() -> None:
    import unbundled
    import unbundled.eventstore

    for module in (unbundled, unbundled.eventstore):
        for name in ("Aggregate", "Repository", "applies"):
            assert name in module.__all__, f"{module.__name__}.{name}"
    assert unbundled.applies is unbundled.eventstore.applies
