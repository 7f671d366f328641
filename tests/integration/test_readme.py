"""Every ```python block in README.md and docs/*.md runs as printed and prints what the
page says.

Conventions (README.md, docs/*.md):

* a ```python block is run as a script in a fresh interpreter, with ``REDIS_URL`` set to the
  session redis-server; it must exit 0;
* it must be followed by a line ``It prints…:`` and a ```text block: its stdout, exactly;
* a block preceded by ``<!-- not run: <reason> -->`` is skipped (the reason is required).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    before: str  # the nearest non-blank line above the fence
    after: str  # the nearest non-blank line below the closing fence ("" at the end)


def fenced_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: unclosed ``` fence")
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        after = next((ln for ln in lines[i + 1:] if ln.strip()), "")
        blocks.append(Block(start + 1, m["lang"], "\n".join(lines[start + 1:i]) + "\n",
                            before.strip(), after.strip()))
        i += 1
    return blocks


@dataclass(frozen=True)
class Example:
    page: str  # path relative to the repository
    line: int
    code: str
    expected: str | None  # None: the README shows no output for it (a test failure)
    skip_reason: str | None


def readme_examples() -> list[Example]:
    return [e for page in PAGES for e in page_examples(page)]


def page_examples(page: Path) -> list[Example]:
    blocks = fenced_blocks(page.read_text(encoding="utf-8"))
    name = str(page.relative_to(ROOT))
    out = []
    for n, b in enumerate(blocks):
        if b.lang != "python":
            continue
        m = NOT_RUN.search(b.before)
        nxt = blocks[n + 1] if n + 1 < len(blocks) else None
        expected = None
        if (nxt is not None and nxt.lang == "text" and b.after.startswith("It prints")
                and b.after.endswith(":") and nxt.before == b.after):
            expected = nxt.code
        out.append(Example(name, b.line, b.code, expected, m["reason"] if m else None))
    return out


EXAMPLES = readme_examples()


def test_the_readme_has_runnable_examples() -> None:
    run = [e for e in EXAMPLES if e.skip_reason is None and e.page == "README.md"]
    assert len(run) >= 2, "README.md lost its runnable python blocks"
    assert any("with app.worker(" in e.code and "send_task" in e.code for e in run)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.page}:{e.line}" for e in EXAMPLES])
def test_readme_python_block(example: Example, redis_url: str, tmp_path: Path) -> None:
    if example.skip_reason is not None:
        pytest.skip(f"{example.page}:{example.line}: not run: {example.skip_reason}")
    assert example.expected is not None, (
        f"{example.page}:{example.line}: follow the block with 'It prints:' and a ```text block "
        f"with its output (or precede it with <!-- not run: reason -->)")
    script = tmp_path / f"readme_{example.line}.py"
    script.write_text(example.code, encoding="utf-8")
    env = dict(os.environ, REDIS_URL=redis_url)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{example.page}:{example.line} failed:\n{proc.stderr}"
    assert proc.stdout == example.expected, (
        f"{example.page}:{example.line} printed\n{proc.stdout}\nbut the README says\n"
        f"{example.expected}\nstderr:\n{proc.stderr}")
