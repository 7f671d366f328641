"""The outputs of a conformance run: terminal table, JSON, JUnit XML, Markdown."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Any
from xml.etree import ElementTree as ET

from .. import __version__
from ..config import mask_url
from .runner import VersionReport

MARK = {"pass": "ok", "fail": "FAIL", "skip": "skip"}


def summary(reports: Sequence[VersionReport]) -> dict[str, Any]:
    return {"passed": sum(r.as_dict()["passed"] for r in reports),
            "failed": sum(r.failed for r in reports),
            "skipped": sum(r.as_dict()["skipped"] for r in reports)}


def as_json(reports: Sequence[VersionReport], broker: str, backend: str) -> str:
    return json.dumps({"machinery_compat": __version__, "broker": mask_url(broker),
                       "backend": mask_url(backend),
                       "at": datetime.now(UTC).isoformat(timespec="seconds"),
                       **summary(reports), "ok": summary(reports)["failed"] == 0,
                       "runs": [r.as_dict() for r in reports]}, indent=2)


def _group(name: str) -> str:
    """``echo/py->go/int8`` -> ``echo/py->go``; other checks are their own group."""
    parts = name.split("/")
    return "/".join(parts[:2]) if parts[0] == "echo" else name


def rows(report: VersionReport) -> list[tuple[str, str, str]]:
    """(check group, result, detail) with the 29 echo types of a direction on one row."""
    out: list[tuple[str, str, str]] = []
    groups: dict[str, list[Any]] = {}
    for c in report.checks:
        groups.setdefault(_group(c.name), []).append(c)
    for g, checks in groups.items():
        failed = [c for c in checks if c.status == "fail"]
        if len(checks) > 1:
            ok = len(checks) - len(failed)
            result = f"{ok}/{len(checks)} ok" if failed else f"ok ({len(checks)} types)"
            detail = "; ".join(f"{c.name.rsplit('/', 1)[-1]}: {c.detail}" for c in failed)
        else:
            result, detail = MARK[checks[0].status], checks[0].detail
        out.append((g, result, detail))
    return out


def table(reports: Sequence[VersionReport], out: IO[str] = sys.stdout) -> None:
    for r in reports:
        ran = f", Go ran {r.machinery_version}" if r.machinery_version else ""
        print(f"\nMachinery {r.version} ({r.flavour}{ran}), names {r.prefix}.*, {r.seconds:g}s",
              file=out)
        if r.error:
            print(f"  could not run: {r.error}", file=out)
        width = max((len(g) for g, _, _ in rows(r)), default=10)
        for g, result, detail in rows(r):
            print(f"  {g:<{width}}  {result:<16} {detail}".rstrip(), file=out)
        if r.cleanup:
            print(f"  cleanup{'' if r.cleanup_ok else ' FAILED'}: {r.cleanup}", file=out)
    s = summary(reports)
    verdict = "all passed" if s["failed"] == 0 else f"{s['failed']} FAILED"
    print(f"\nconformance: {verdict} ({s['passed']} passed, {s['failed']} failed, "
          f"{s['skipped']} skipped)", file=out)


def junit_xml(reports: Sequence[VersionReport]) -> str:
    suites = ET.Element("testsuites", name="machinery-compat conformance")
    for r in reports:
        suite = ET.SubElement(suites, "testsuite", name=f"machinery-{r.version}",
                              tests=str(len(r.checks) + (1 if r.error else 0)
                                        + (0 if r.cleanup_ok else 1)),
                              failures=str(r.failed),
                              skipped=str(sum(c.status == "skip" for c in r.checks)),
                              time=f"{r.seconds:g}")
        if r.error:
            case = ET.SubElement(suite, "testcase", classname=f"machinery-{r.version}",
                                 name="setup")
            ET.SubElement(case, "failure", message=r.error[:200]).text = r.error
        if not r.cleanup_ok:
            case = ET.SubElement(suite, "testcase", classname=f"machinery-{r.version}",
                                 name="cleanup")
            ET.SubElement(case, "failure", message=r.cleanup[:200]).text = r.cleanup
        for c in r.checks:
            case = ET.SubElement(suite, "testcase", classname=f"machinery-{r.version}",
                                 name=c.name, time=f"{c.seconds:g}")
            if c.status == "fail":
                ET.SubElement(case, "failure", message=c.detail[:200]).text = c.detail
            elif c.status == "skip":
                ET.SubElement(case, "skipped", message=c.detail)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode")


def markdown(reports: Sequence[VersionReport], broker: str, backend: str) -> str:
    s = summary(reports)
    lines = [
        "# machinery-compat conformance",
        "",
        f"machinery-compat {__version__}, Python {platform.python_version()}, "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}; broker `{mask_url(broker)}`, "
        f"result backend `{mask_url(backend)}`.",
        "",
        f"**{'All passed' if s['failed'] == 0 else str(s['failed']) + ' failed'}**: "
        f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped.",
    ]
    for r in reports:
        lines += ["", f"## Machinery {r.version} (`{r.flavour}`"
                      f"{', Go ran ' + r.machinery_version if r.machinery_version else ''})", ""]
        if r.error:
            lines += [f"Could not run: {r.error}", ""]
        lines += ["| check | result | detail |", "|---|---|---|"]
        for g, result, detail in rows(r):
            lines.append(f"| {g} | {result} | {detail.replace('|', '/')} |")
        if r.cleanup:
            lines += ["", f"Cleanup{'' if r.cleanup_ok else ' FAILED'}: {r.cleanup}."]
    return "\n".join(lines) + "\n"
