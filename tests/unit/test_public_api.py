"""Everything in ``machinery_compat.__all__`` is documented: the object itself and every public
method and property its class defines (what ``help()`` and IDEs show a user)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import machinery_compat

#: Members that document themselves elsewhere (dataclass machinery, Exception plumbing).
_SKIP = {"FIELDS", "args", "with_traceback", "add_note"}


def _public_members(cls: type) -> list[tuple[str, Any]]:
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_") or name in _SKIP:
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            out.append((name, member))
    return out


@pytest.mark.parametrize("name", sorted(n for n in machinery_compat.__all__ if n != "__version__"))
def test_public_names_have_docstrings(name: str) -> None:
    obj = getattr(machinery_compat, name)
    doc = obj.__doc__ if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
    assert doc and doc.strip(), f"{name} has no docstring"
    if inspect.isclass(obj):
        missing = [m for m, member in _public_members(obj) if not (member.__doc__ or "").strip()]
        assert not missing, f"{name}: undocumented public members {missing}"


def test_machinery_constructor_documents_its_arguments() -> None:
    doc = machinery_compat.Machinery.__doc__ or ""
    for arg in inspect.signature(machinery_compat.Machinery).parameters:
        assert f"``{arg}``" in doc, f"Machinery(...) does not document {arg}"
