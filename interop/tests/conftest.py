"""Fixtures and the RESULTS.md writer for the Go <-> Python interop suite.

* ``go_bins`` (session): builds interop/bin/ with ``interop/build.sh`` (cached by Go's
  build cache); a failed build skips locally and FAILS under CI=true.
* ``interop_redis`` (session): a private redis-server (64 DBs) for the whole suite.
* ``new_db`` (session): ``new_db()`` returns the URL of a fresh, flushed DB, so every
  scenario has its own queues *and* its own ``delayed_tasks`` set.
* ``flavour`` (module, parametrized): ``v1``, ``v2-redigo``, ``v2-goredis``.

Each test carries ``@pytest.mark.matrix(direction, case)``; at session end the outcomes are
written to ``interop/RESULTS.md`` (only when interop tests actually ran and none were
deselected, so a partial run never overwrites the full table).
"""

from __future__ import annotations

import itertools
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from interop.tests.harness import (  # noqa: E402
    BIN,
    DIRECTIONS,
    FLAVOURS,
    INTEROP,
    build_go_programs,
)
from tests.services import RedisServer, in_ci, start_or_report  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_PATH = INTEROP / "RESULTS.md"
N_DATABASES = 64


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "matrix(direction, case): one cell of the interop matrix (interop/RESULTS.md)"
    )
    global _STATE
    _STATE = _State()


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_bins() -> Path:
    ok, message = build_go_programs()
    if not ok:
        if in_ci():
            pytest.fail(f"{message}\n(CI=true: the Go interop programs must build)")
        pytest.skip(f"Go interop programs unavailable: {message.splitlines()[0]}")
    return BIN


@pytest.fixture(scope="session")
def interop_redis() -> Iterator[RedisServer]:
    server = start_or_report(lambda: RedisServer(extra_args=["--databases", str(N_DATABASES)]))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def new_db(interop_redis: RedisServer) -> Callable[[], str]:
    counter = itertools.count(1)

    def allocate() -> str:
        db = next(counter) % N_DATABASES
        with interop_redis.client(db=db) as c:
            c.flushdb()
        return interop_redis.url_for_db(db)

    return allocate


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --------------------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.cells: dict[str, tuple[str, str, str]] = {}  # nodeid -> (direction, case, flavour)
        self.order: list[str] = []  # cases, first-seen order
        self.last_case: dict[str, str] = {}
        self.extra: dict[str, str | None] = {}
        self.notes: list[tuple[tuple[str, str, str], str]] = []  # ((dir, case, flavour), note)  # our tests outside the matrix -> outcome
        self.outcomes: dict[str, str] = {}
        self.deselected_interop = 0
        self.started = time.monotonic()


_STATE = _State()


def _is_ours(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(HERE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    st = _STATE
    ours = [i for i in items if _is_ours(i)]
    # definition order (pytest may have regrouped items by module-scoped parameters)
    ours.sort(key=lambda i: (str(i.path), i.reportinfo()[1] or 0))
    for item in ours:
        m = item.get_closest_marker("matrix")
        if m is None:
            st.extra[item.nodeid] = None
            continue
        direction, case = m.args
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = case.format(**params)
        flv = str(params.get("flavour", "-"))
        st.cells[item.nodeid] = (direction, case, flv)
        if case not in st.order:
            # keep a module's own order: a case only one direction has goes right after
            # the case that precedes it in its module
            prev = st.last_case.get(item.module.__name__ if item.module else "")
            pos = st.order.index(prev) + 1 if prev in st.order else len(st.order)
            st.order.insert(pos, case)
        st.last_case[item.module.__name__ if item.module else ""] = case


def pytest_deselected(items: list[pytest.Item]) -> None:
    if not items:
        return
    st = _STATE
    st.deselected_interop += sum(1 for i in items if _is_ours(i))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    st = _STATE
    if report.nodeid in st.cells:
        outcomes: dict[str, str | None] = st.outcomes  # type: ignore[assignment]
    elif report.nodeid in st.extra:
        outcomes = st.extra
    else:
        return
    for key, value in report.user_properties:
        if key == "note" and report.when == "call" and report.nodeid in st.cells:
            st.notes.append((st.cells[report.nodeid], str(value)))
    prev = outcomes.get(report.nodeid)
    if report.failed:
        outcomes[report.nodeid] = "failed"
    elif report.skipped and prev != "failed":
        outcomes[report.nodeid] = "skipped"
    elif report.passed and report.when == "call" and prev is None:
        outcomes[report.nodeid] = "passed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    st = _STATE
    ran = [o for o in st.outcomes.values() if o in ("passed", "failed")]
    if not ran or st.deselected_interop or session.config.option.collectonly:
        return
    collected = {Path(str(i.path)).resolve() for i in session.items if _is_ours(i)}
    if {p.resolve() for p in HERE.glob("test_*.py")} - collected:
        return  # only some modules ran: a partial table must not replace the full one
    try:
        RESULTS_PATH.write_text(_render(st), encoding="utf-8")
    except OSError as e:  # pragma: no cover
        sys.stderr.write(f"could not write {RESULTS_PATH}: {e}\n")


_ICON = {"passed": "✅", "failed": "❌", "skipped": "skipped", None: "not run"}
_SHORT = {"Python → Go worker": "Py→Go", "Go → Python worker": "Go→Py", "mixed pool": "mixed",
          "workflows": "wf"}


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        gomod = (INTEROP / "go.mod").read_text()
    except OSError:
        gomod = ""
    for label, mod in (("Machinery v1", r"github\.com/RichardKnop/machinery"),
                       ("Machinery v2", r"github\.com/RichardKnop/machinery/v2"),
                       ("go-redis", r"github\.com/redis/go-redis/v9")):
        m = re.search(rf"^\s*(?:require\s+)?{mod}\s+(v\S+)", gomod, re.M)
        out[label] = m.group(1) if m else "?"
    for label, cmd in (("Go", ["go", "version"]), ("redis-server", ["redis-server", "--version"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            text = "?"
        out[label] = text
    out["Python"] = platform.python_version()
    return out


def _render(st: _State) -> str:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    grid: dict[tuple[str, str, str], str | None] = {}
    for nodeid, (direction, case, flv) in st.cells.items():
        outcome = st.outcomes.get(nodeid)
        grid[(direction, case, flv)] = outcome
        c = counts.setdefault((direction, flv), {"passed": 0, "failed": 0, "skipped": 0})
        if outcome in c:
            c[outcome] += 1
    columns = [(d, f) for d in DIRECTIONS for f in FLAVOURS
               if any(k[0] == d and k[2] == f for k in grid)]
    v = _versions()
    ex = list(st.extra.values())
    extra = (f"{len(ex)} other test(s) in interop/tests (regressions): "
             f"{ex.count('passed')} passed, {ex.count('failed')} failed, "
             f"{ex.count('skipped')} skipped")
    total = {k: sum(c[k] for c in counts.values()) for k in ("passed", "failed", "skipped")}
    lines = [
        "# Interop results: Go Machinery ⇄ machinery_compat on Redis",
        "",
        "Generated by `interop/tests/conftest.py` from the outcomes of the last full run of",
        "`python -m pytest interop/tests` (do not edit by hand).",
        "",
        f"* Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"* Machinery: v1 `{v['Machinery v1']}` (flavour `v1`), v2 `{v['Machinery v2']}` "
        f"(flavours `v2-redigo`, `v2-goredis` with go-redis `{v['go-redis']}`)",
        f"* {v['Go']}; {v['redis-server'].split(' sha=')[0]}; Python {v['Python']}",
        f"* Outcome: {total['passed']} passed, {total['failed']} failed, {total['skipped']} "
        f"skipped matrix cells; {extra} in {time.monotonic() - st.started:.0f} s",
        "",
        "Directions: **Py→Go** = Python producer, Go worker (results read by Python's",
        "`AsyncResult` and by Go's `AsyncResult` via `mcproducer`); **Go→Py** = Go producer",
        "(`mcproducer`, `AsyncResult.Get`), Python worker; **mixed** = one Go and one Python",
        "worker on the same queue, tasks from both producers; **wf** = workflows (chains,",
        "groups, chords) whose steps run on a Go and a Python worker sharing one queue, each",
        "worker registering a different set of task names, sent by either producer.",
        "",
        "| case | " + " | ".join(f"{_SHORT.get(d, d)} {f}" for d, f in columns) + " |",
        "|---|" + "|".join(":-:" for _ in columns) + "|",
    ]
    for case in st.order:
        row = [_ICON[grid[(d, case, f)]] if (d, case, f) in grid else "" for d, f in columns]
        lines.append(f"| {case} | " + " | ".join(row) + " |")
    lines += ["", "Per flavour and direction (passed / failed / skipped):", "",
              "| direction | " + " | ".join(FLAVOURS) + " |",
              "|---|" + "|".join(":-:" for _ in FLAVOURS) + "|"]
    for d in DIRECTIONS:
        cells = []
        for f in FLAVOURS:
            c = counts.get((d, f))
            cells.append(f"{c['passed']} / {c['failed']} / {c['skipped']}" if c else "")
        lines.append(f"| {_SHORT.get(d, d)} | " + " | ".join(cells) + " |")
    if st.notes:
        lines += ["", "Observed in this run:", ""]
        for (_d, case, flv), note in st.notes:
            lines.append(f"* {case} [{flv}]: {note}")
    lines += ["", NOT_IN_MATRIX.strip(), ""]
    return "\n".join(lines)


NOT_IN_MATRIX = """
## Left out of the matrix, and why

* **Argument-reflection failures sent to a Go worker** (`{"Type":"int64","Value":1.5}`,
  `"1"` for an `int64`): Machinery's `Process` returns the error to the broker after
  storing FAILURE, and then v2-redigo livelocks, v2-goredis and v1 lose already-popped
  messages (interop/README.md, last section); a JSON bool/object for a slice type even
  crashes the Go process (protocol notes §2.2). The Python worker's answer to the same bytes
  (FAILURE `Reflect task args error: …`, Go's texts) is tested in
  `tests/behaviour/test_worker.py`.
* **Undecodable messages sent to a Go worker**: the same consumer breakage (protocol
  notes §5.2).
* **Chords sent by Go's `SendGroup`/`SendChord`**: `mcproducer` only calls `SendTask`, so the
  Go-produced chords (wf) get `InitGroup` and the members' PENDING states from Python first
  (what `SendGroup` does before publishing, §3.1), then Go publishes every member.

## Go behaviour worth knowing (seen in these runs)

* A Go worker moves at most one due task from `delayed_tasks` per poll period
  (default 500 ms), and the go-redis flavour takes the *latest*-due first
  (`ZREVRANGEBYSCORE`): with several tasks due together, an early one can wait several
  periods. The Python worker moves every due task in one Lua call.
* A Go worker keeps RPUSHing a task it does not have back to its queue in a busy loop
  until another worker takes it (the unregistered-task cases).
"""

