"""The Go probe programs: building them against a Machinery version, running them.

The probes are ``mcworker`` (a Go Machinery worker with the conformance tasks) and
``mcproducer`` (Go's ``SendTask`` + ``AsyncResult`` driven by JSON lines).  Their sources
ship in this package (``conformance/go/``: the interop suite's Go module, go.mod/go.sum, the
two commands and their internal packages; in a source checkout those are symlinks into
``interop/``, the one place they are edited).  :func:`build_probes` copies them into
``~/.cache/machinery_compat/conformance/<version>-<sources hash>/``, points the module at the
Machinery version asked for (``go get github.com/RichardKnop/machinery[/v2]@<version>``,
through the user's ``GOPROXY``) and builds both binaries there; later runs reuse them.
A probe binary links both Machinery lines (v1 and v2): ``-flavour v1`` runs the v1 code,
``-flavour v2-redigo`` the v2 code, and the ``ready`` line says which module version that is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..exceptions import MachineryCompatError

#: The Machinery versions the interop suite pins (go.mod), newest line first.
PINNED = ("v2.0.16", "v1.10.8")
MODULES = {"v1": "github.com/RichardKnop/machinery", "v2": "github.com/RichardKnop/machinery/v2"}
PROBES = ("mcworker", "mcproducer")
_VERSION = re.compile(r"^v([12])\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$")


class ConformanceError(MachineryCompatError):
    """The conformance run could not start (no Go, a failed build, a probe that died)."""


def major(version: str) -> str:
    """``"v1"`` or ``"v2"`` for a Machinery version; a clear error for anything else."""
    m = _VERSION.match(version)
    if m is None:
        raise ConformanceError(
            f"--machinery {version!r}: give a Machinery module version such as v2.0.16 or "
            "v1.10.8 (v1.x or v2.x, with the leading v)")
    return "v" + m.group(1)


def flavour(version: str) -> str:
    """The probe flavour that runs ``version``'s code: v1, or v2 with its redigo Redis client
    (``redis.New``, what Machinery v2's examples use)."""
    return "v1" if major(version) == "v1" else "v2-redigo"


def source_dir() -> Path:
    return Path(__file__).resolve().parent / "go"


def _source_files(root: Path) -> list[Path]:
    files = [root / "go.mod", root / "go.sum"]
    for sub in ("cmd/mcworker", "cmd/mcproducer", "internal"):
        files += sorted(p for p in (root / sub).rglob("*.go") if not p.name.endswith("_test.go"))
    missing = [str(f) for f in files[:2] if not f.is_file()]
    if missing or len(files) < 4:
        raise ConformanceError(f"the Go probe sources are missing from {root} ({missing or 'no .go'})"
                               "; reinstall machinery-compat[conformance] or pass --go-bin DIR")
    return files


def sources_hash(root: Path | None = None) -> str:
    root = root or source_dir()
    h = hashlib.sha256()
    for f in _source_files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "machinery_compat" / "conformance"


def _pinned_in(go_mod: str, module: str) -> str | None:
    m = re.search(rf"^\s*{re.escape(module)}\s+(v\S+)", go_mod, re.M)
    return m.group(1) if m else None


def build_probes(version: str, *, cache: Path | None = None,
                 log: Callable[[str], None] = lambda s: None, timeout: float = 900) -> Path:
    """The directory holding ``mcworker`` and ``mcproducer`` built against ``version`` (built
    now unless the cache has them).  Raises :class:`ConformanceError` with Go's output."""
    module = MODULES[major(version)]
    go = shutil.which("go")
    if go is None:
        raise ConformanceError("go not found in PATH: install Go 1.22+ to build the probes, "
                               "or pass --go-bin DIR with prebuilt mcworker and mcproducer")
    src = source_dir()
    final = (cache or cache_root()) / f"{version}-{sources_hash(src)}"
    if all((final / "bin" / p).is_file() for p in PROBES):
        return final / "bin"
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        tree = work / "src"
        for f in _source_files(src):
            dest = tree / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)  # follows the checkout's symlinks
        env = {**os.environ, "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip()}

        def go_run(*args: str) -> None:
            log(f"go {' '.join(args)}")
            try:
                done = subprocess.run([go, *args], cwd=tree, env=env, capture_output=True,
                                      text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise ConformanceError(f"go {' '.join(args)}: no answer in {timeout:g}s") from e
            if done.returncode != 0:
                raise ConformanceError(f"go {' '.join(args)} failed (exit {done.returncode}) for "
                                       f"Machinery {version}:\n{done.stderr.strip()[-3000:]}")

        log(f"building mcworker and mcproducer against Machinery {version} in {final} (the "
            "first build downloads modules and compiles for minutes; later runs reuse it)")
        if _pinned_in((tree / "go.mod").read_text(), module) != version:
            go_run("get", f"{module}@{version}")
        go_run("build", "-o", str(work / "bin") + os.sep, "./cmd/mcworker", "./cmd/mcproducer")
        shutil.rmtree(tree)
        try:
            work.rename(final)
        except OSError:  # another run built it meanwhile
            if not all((final / "bin" / p).is_file() for p in PROBES):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "bin"


def prebuilt(go_bin: str) -> Path:
    """``--go-bin DIR``: check it holds both probes."""
    d = Path(go_bin).expanduser()
    missing = [p for p in PROBES if not os.access(d / p, os.X_OK)]
    if missing:
        raise ConformanceError(f"--go-bin {go_bin}: no executable {', '.join(missing)} there "
                               "(build them with interop/build.sh, or leave --go-bin out)")
    return d


@dataclass(frozen=True, slots=True)
class GoSettings:
    """What both probes are told: flavour, URLs and the AMQP topology."""

    bin_dir: Path
    flavour: str
    broker: str
    backend: str
    exchange: str  # AMQP exchange (dedicated to the run)
    counters: str | None = None  # Redis for fail_n_times' counter; None: the probe's default

    def flags(self, queue: str) -> list[str]:
        out = ["-flavour", self.flavour, "-broker", self.broker, "-backend", self.backend,
               "-queue", queue]
        if "amqp" in (_scheme(self.broker), _scheme(self.backend)):
            out += ["-amqp-exchange", self.exchange, "-amqp-exchange-type", "direct",
                    "-amqp-binding-key", queue]
        return out


def _scheme(url: str) -> str:
    return url.partition("://")[0].rstrip("s").lower()


class GoWorker:
    """``mcworker`` consuming one queue; every stdout JSON line is kept in :attr:`events`."""

    def __init__(self, go: GoSettings, queue: str, *, concurrency: int = 4, tag: str,
                 log_dir: Path) -> None:
        self.go, self.queue, self.tag = go, queue, tag
        args = [str(go.bin_dir / "mcworker"), *go.flags(queue), "-concurrency", str(concurrency),
                "-tag", tag, "-quit-timeout", "20s"]
        if go.counters:
            args += ["-counters", go.counters]
        self.args = args
        self.log_path = log_dir / f"{tag}.log"
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def start(self, timeout: float = 45.0) -> dict[str, Any]:
        """Start and wait for its ``ready`` line (returned)."""
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._log,
                                      text=True, bufsize=1)
        threading.Thread(target=self._read, name=f"read-{self.tag}", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ConformanceError(f"Go worker {self.tag} did not start: "
                                       f"{self._fatal() or self._tail()}")
        return next(e for e in self.snapshot() if e.get("event") == "ready")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(event)
            if event.get("event") == "ready":
                self._ready.set()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def runs(self, uuid: str | None = None) -> list[dict[str, Any]]:
        """The ``task`` lines (one per attempt), of one task UUID if given."""
        return [e for e in self.snapshot() if e.get("event") == "task"
                and (uuid is None or e.get("uuid") == uuid)]

    def wait_runs(self, uuid: str, n: int = 1, timeout: float = 3.0) -> list[dict[str, Any]]:
        """:meth:`runs` of ``uuid`` once there are ``n`` (or ``timeout`` passed): a ``task``
        line is written before Go stores the result, but read here by another thread, so a
        result can be seen before its line."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.runs(uuid)
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def _fatal(self) -> str:
        return "; ".join(str(e.get("error")) for e in self.snapshot() if e.get("event") == "fatal")

    def _tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-5:]) or "no output"
        except OSError:
            return "no output"

    def stop(self, timeout: float = 25.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def run_producer(go: GoSettings, queue: str, lines: Sequence[dict[str, Any]], *,
                 parallel: int = 8, timeout: float = 60.0) -> dict[Any, dict[str, Any]]:
    """Feed ``lines`` (each with an ``id``) to ``mcproducer``; its output lines by ``id``."""
    args = [str(go.bin_dir / "mcproducer"), *go.flags(queue), "-parallel", str(parallel)]
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ConformanceError(f"mcproducer did not finish in {timeout:g}s") from e
    if done.returncode != 0:
        raise ConformanceError(f"mcproducer failed (exit {done.returncode}): "
                               f"{done.stderr.strip()[-1500:]}")
    out: dict[Any, dict[str, Any]] = {}
    for text in done.stdout.splitlines():
        if text.strip():
            item = json.loads(text)
            out[item.get("id")] = item
    return out
