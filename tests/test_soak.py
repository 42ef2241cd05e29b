"""``scripts/soak.py`` and the reliability suite's output: tests never write into the tree.

Only the full, deliberate run (``make soak``) updates the tracked ``docs/reliability/figures.json``;
the reduced run (part of ``make test``) writes its figures outside the work tree. Expected
refusals (a flood of ``refused a new session`` warnings) are counted, not printed, while any
other warning still reaches the output.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRACKED_FIGURES = REPO / "docs" / "reliability" / "figures.json"


def run_reduced_soak(select: str) -> str:
    result = subprocess.run(
        [sys.executable, "scripts/soak.py", "--reduced", "-k", select, "--timeout", "120"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_the_reduced_soak_leaves_the_tracked_figures_alone() -> None:
    before = TRACKED_FIGURES.read_bytes()
    output = run_reduced_soak("half_open")
    assert TRACKED_FIGURES.read_bytes() == before
    [written] = re.findall(r"==> figures written to (.+)", output)
    target = Path(written.strip()).resolve()
    assert not target.is_relative_to(REPO), f"the reduced soak wrote into the tree: {target}"
    assert '"mode": "reduced"' in target.read_text()
    # The figures are printed too: the table has the test's row.
    assert "test_half_open_initialize_flood_cannot_lock_out_a_client" in output


@pytest.mark.slow
def test_the_reduced_soak_counts_expected_refusals_instead_of_printing_them() -> None:
    output = run_reduced_soak("half_open or bad_origin_or_host")
    lines = output.splitlines()
    refusals = [line for line in lines if "refused" in line and "WARNING" in line]
    assert not refusals, refusals[:5]
    counted = [line for line in lines if line.startswith("expected log records")]
    assert any("'refused a new session'" in line for line in counted), counted
    assert any("'refused request with Origin'" in line for line in counted), counted
    assert len(lines) < 300, f"{len(lines)} lines of output"


def test_expected_records_are_counted_and_others_pass_through() -> None:
    from tests.reliability._support import ExpectedLogRecords

    stream = io.StringIO()
    handler = ExpectedLogRecords(stream=stream)
    logger = logging.getLogger("supervisor.mcp._http_test_soak")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        for n in range(500):
            logger.warning("refused a new session: %s", f"maximum sessions ({n}) reached")
        logger.warning("refused request with Origin %r", "http://evil.example")
        logger.warning("something else went wrong: %s", "disk full")
        logger.error("a tool crashed")
        logger.info("an info record is not shown")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    shown = stream.getvalue()
    assert "refused" not in shown
    assert "something else went wrong: disk full" in shown
    assert "a tool crashed" in shown
    assert "an info record" not in shown
    assert handler.counts == {"refused a new session": 500, "refused request with Origin": 1}
    assert handler.summary() == [
        "expected log records (counted, not shown): 500 x 'refused a new session'",
        "expected log records (counted, not shown): 1 x 'refused request with Origin'",
    ]
