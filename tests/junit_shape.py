"""The shape of a JUnit XML report as CI systems read it (Jenkins' junit-10.xsd, which GitHub
and GitLab test reporters follow): what every test that writes one checks its file against."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

SUITE_CHILDREN = {"properties", "testcase", "system-out", "system-err"}
CASE_CHILDREN = {"skipped", "error", "failure", "system-out", "system-err"}
OUTCOMES = {"failure", "error", "skipped"}


def check_junit(path: Path) -> dict[tuple[str, str], str]:
    """Assert the report's shape; return each test case's outcome by (suite, case name).

    testsuites > testsuite (name, tests, failures, errors, skipped, time, timestamp) >
    testcase (name, classname, time) with at most one failure/error/skipped, each of
    failure and error carrying a message; every count agrees with the cases.
    """
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    outcomes: dict[tuple[str, str], str] = {}
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for suite in root:
        assert suite.tag == "testsuite", suite.tag
        for attribute in ("name", "tests", "failures", "errors", "skipped", "time", "timestamp"):
            assert attribute in suite.attrib, f"testsuite lacks {attribute}"
        assert {child.tag for child in suite} <= SUITE_CHILDREN
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for case in suite.iter("testcase"):
            assert case.get("name") and case.get("classname"), case.attrib
            assert float(case.get("time", "x")) >= 0
            assert {child.tag for child in case} <= CASE_CHILDREN
            marks = [child for child in case if child.tag in OUTCOMES]
            assert len(marks) <= 1, f"{case.get('name')} has {len(marks)} outcomes"
            for mark in marks:
                if mark.tag in ("failure", "error"):
                    assert mark.get("message"), f"{case.get('name')}: {mark.tag} without message"
            outcome = marks[0].tag if marks else "passed"
            counts["tests"] += 1
            key = {"failure": "failures", "error": "errors", "skipped": "skipped"}.get(outcome)
            if key:
                counts[key] += 1
            outcomes[suite.attrib["name"], case.attrib["name"]] = outcome
        for key, value in counts.items():
            assert int(suite.attrib[key]) == value, f"{suite.attrib['name']}: {key}"
        for key in totals:
            totals[key] += counts[key]
    for key, value in totals.items():
        if key in root.attrib:
            assert int(root.attrib[key]) == value, f"testsuites: {key}"
    return outcomes
