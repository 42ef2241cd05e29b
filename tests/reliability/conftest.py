"""The ``soak`` marker, the ``--soak`` option and the figures every test reports.

Soak tests (``@pytest.mark.soak``) are skipped unless ``--soak`` is given or the environment has
``SOAK=1`` (full size) or ``SOAK=reduced`` (CI size). Every test may record figures with the
``figures`` fixture; they are printed in the terminal summary and, when ``RELIABILITY_FIGURES``
names a file, written there as JSON (``scripts/soak.py`` does this). Nothing is written into the
work tree: ``scripts/soak.py`` decides where the file goes.

In soak mode, records the floods provoke by design (``refused a new session``) are counted by
`ExpectedLogRecords` and reported as one line in the summary; every other warning or error is
printed as it happens.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from ._support import FIGURES, ExpectedLogRecords, Figures, soak_mode

_EXPECTED_RECORDS = ExpectedLogRecords()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long reliability tests (load, leak, soak); size from SOAK=reduced|1",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: long reliability test (load, leak, soak); needs --soak or SOAK=1"
    )
    if config.getoption("--soak", default=False) and not os.environ.get("SOAK"):
        os.environ["SOAK"] = "1"
    if soak_mode() != "off":
        logging.getLogger().addHandler(_EXPECTED_RECORDS)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(_EXPECTED_RECORDS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if soak_mode() != "off":
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak, SOAK=1 or SOAK=reduced")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """Record a test's measured figures (name -> value), reported at the end of the run."""
    return Figures(request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _EXPECTED_RECORDS.summary():
        terminalreporter.write_line(line)
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, values in FIGURES.items():
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        terminalreporter.write_line(f"{test.rsplit('::', 1)[-1]}: {shown}")
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
