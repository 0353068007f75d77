"""The chaos tests' marker, and their table shown at the end of the run, pass or fail."""

from __future__ import annotations

import pytest

#: The table lines each chaos test recorded (``record_property("chaos table", lines)``).
_TABLES: list[tuple[str, list[str]]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: the chaos suite's short run (tests/chaos; `make chaos`: the full one)"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        for name, value in report.user_properties:
            if name == "chaos table" and isinstance(value, list):
                _TABLES.append((report.nodeid.rpartition("::")[2], [str(v) for v in value]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TABLES:
        terminalreporter.section("chaos")
        for nodeid, lines in _TABLES:
            terminalreporter.write_line(nodeid)
            for line in lines:
                terminalreporter.write_line("    " + line)
