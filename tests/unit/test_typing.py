"""``@app.task`` keeps the function's parameter and return types for mypy (``Task[P, R]``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SNIPPET = '''
from typing import Any
from machinery_compat import Machinery

app = Machinery(broker="memory://")

@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b

@app.task
def echo(x: str) -> str:
    return x

@app.task(name="half", bind=True)
def half(self: Any, n: int) -> float:
    return n / 2

add.delay(1, 2)
add.delay(1, b=2)
echo.delay("x")
half.delay(3)
add.delay("x", 2)  # E1
echo.delay(1)  # E2
half.delay("3")  # E3
add.delay(1, c=2)  # E4
reveal_type(add(1, 2))  # R1
reveal_type(half(4))  # R2
reveal_type(add.apply_async(args=[1, 2]).get())  # R3
'''


def test_task_decorator_keeps_parameter_and_return_types(tmp_path: Path) -> None:
    src = tmp_path / "snippet.py"
    src.write_text(textwrap.dedent(SNIPPET))
    out, err, _status = mypy_api.run(["--strict", "--no-error-summary", "--cache-dir",
                                      str(tmp_path / ".mypy_cache"), str(src)])
    lines = src.read_text().splitlines()
    by_marker: dict[str, list[str]] = {}
    for row in out.splitlines():
        _, lineno, rest = row.split(":", 2)
        marker = lines[int(lineno) - 1].rpartition("# ")[2] if "# " in lines[int(lineno) - 1] else ""
        by_marker.setdefault(marker, []).append(rest.strip())
    assert err == ""
    # no complaints about the correct calls, one error per wrong call
    assert set(by_marker) == {"E1", "E2", "E3", "E4", "R1", "R2", "R3"}, out
    assert 'incompatible type "str"; expected "int"' in by_marker["E1"][0]
    assert 'incompatible type "int"; expected "str"' in by_marker["E2"][0]
    assert 'incompatible type "str"; expected "int"' in by_marker["E3"][0]
    assert 'Unexpected keyword argument "c"' in by_marker["E4"][0]
    assert by_marker["R1"] == ['note: Revealed type is "int"']
    assert by_marker["R2"] == ['note: Revealed type is "float"']
    assert by_marker["R3"] == ['note: Revealed type is "Any"']
