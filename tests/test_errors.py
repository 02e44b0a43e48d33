"""The exception tree: one root, drawn in ``p2prt.errors``' docstring, and nothing outside it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import p2prt
from p2prt import errors
from p2prt.errors import P2prtError

_TREE_LINE = re.compile(r"^(?P<prefix>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w*(?:Error|Exception))\b")


def _drawn_tree() -> dict[str, str | None]:
    """``{class name: parent name}`` as drawn in the docstring (the root's parent is None)."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[str] = []  # stack[d] = last name drawn at depth d
    root_indent: int | None = None
    for line in errors.__doc__.splitlines():
        m = _TREE_LINE.match(line)
        if not m:
            continue
        prefix = m.group("prefix")
        if root_indent is None:
            if "├" in line or "└" in line:
                continue
            root_indent = len(prefix)
            depth = 0
        elif "├" not in line and "└" not in line:
            continue  # prose mentioning an error after the tree
        else:
            depth = (len(prefix) - root_indent) // 4 + 1
        del stack[depth:]
        parents[m.group("name")] = stack[-1] if stack else None
        stack.append(m.group("name"))
    return parents


def test_docstring_tree_parses() -> None:
    tree = _drawn_tree()
    assert tree["P2prtError"] is None
    assert tree["ConfigError"] == "P2prtError"
    assert tree["BadCertificateSignatureError"] == "CertificateError"
    assert tree["BoardStoreError"] == "BoardError"


@pytest.mark.parametrize("name", errors.__all__)
def test_exported_error_is_a_p2prt_error(name: str) -> None:
    cls = getattr(errors, name)
    assert inspect.isclass(cls)
    assert issubclass(cls, P2prtError)


@pytest.mark.parametrize("name", errors.__all__)
def test_exported_error_is_drawn_in_docstring(name: str) -> None:
    assert name in _drawn_tree()


@pytest.mark.parametrize("name", errors.__all__)
def test_drawn_parent_is_the_real_parent(name: str) -> None:
    cls = getattr(errors, name)
    parent = _drawn_tree()[name]
    if parent is None:
        assert cls.__bases__ == (Exception,)
    else:
        # Builtin mix-ins (TimeoutError for the timeout errors) are not drawn.
        assert [b.__name__ for b in cls.__bases__ if issubclass(b, errors.P2prtError)] == [parent]


def test_everything_drawn_is_exported() -> None:
    assert set(_drawn_tree()) == set(errors.__all__)


def test_every_class_in_errors_is_exported() -> None:
    defined = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and obj.__module__ == errors.__name__}
    assert defined == set(errors.__all__)


def test_package_reexports_root() -> None:
    assert p2prt.P2prtError is P2prtError


def _p2prt_modules() -> list[ModuleType]:
    modules: list[ModuleType] = [p2prt]

    def onerror(name: str) -> None:  # a package failing to import: reported by the import below
        pass

    for info in pkgutil.walk_packages(p2prt.__path__, "p2prt.", onerror=onerror):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # importing it runs the CLI
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:
            if exc.name is not None and (exc.name == "p2prt" or exc.name.startswith("p2prt.")):
                raise
            continue  # an optional third-party dependency is missing
    return modules


def test_walk_finds_modules() -> None:
    names = {m.__name__ for m in _p2prt_modules()}
    assert {"p2prt.errors", "p2prt.identity.keys", "p2prt.cli.main"} <= names
    assert "p2prt.__main__" not in names


def _public_exceptions_outside_tree(modules: list[ModuleType]) -> list[str]:
    outside = []
    for module in modules:
        for name, obj in vars(module).items():
            if not (inspect.isclass(obj) and obj.__module__ == module.__name__):
                continue  # imported from elsewhere; checked where defined
            if not issubclass(obj, BaseException) or name.startswith("_"):
                continue
            if not issubclass(obj, P2prtError):
                outside.append(f"{module.__name__}.{name}")
    return outside


def test_outside_tree_check_catches_a_stray_exception() -> None:
    fake = ModuleType("p2prt.fake")
    exec(
        "from p2prt.errors import P2prtError\n"
        "class StrayError(ValueError): pass\n"
        "class GoodError(P2prtError): pass\n"
        "class _PrivateError(Exception): pass\n",
        fake.__dict__,
    )
    assert _public_exceptions_outside_tree([fake]) == ["p2prt.fake.StrayError"]


def test_no_public_exception_outside_the_tree() -> None:
    outside = _public_exceptions_outside_tree(_p2prt_modules())
    assert outside == [], f"public exceptions that are not P2prtError: {outside}"
