"""Run the official MCP conformance suite (``@modelcontextprotocol/conformance``) against us.

The suite is installed (pinned, with a pinned Node 22) by ``bash scripts/setup-conformance.sh``
into ``.tools/conformance/``. Without that install the test is skipped, except under CI
(``CI`` set), where a missing install is a failure.

For each *target*, a way of serving the fixture ``tests/conformance/server.py``, namely
``supervisor`` (our adapter, ``supervisor.mcp.serve_http``) and ``sdk`` (the SDK's own session
manager, kept as a reference), the test starts the target's runner as a subprocess on a free
loopback port, runs the suite's active server scenarios against it (``conformance server
--url ...``), reads the per-scenario ``checks.json`` files, and asserts that every scenario
passes, except those listed in ``tests/conformance/baseline.json``. A baseline entry that
passes is stale and fails the test too (as the suite's own ``--expected-failures`` does), so
the baseline stays honest.

``baseline.json`` maps a scenario name to the reason it is expected to fail, either for every
target (``"name": "reason"``) or for some (``"name": {"reason": "...", "targets": ["sdk"]}``).

The suite's *pending* scenarios are run too, for information only (printed, never asserted).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE_DIR = ROOT / "tests" / "conformance"
SUITE = ROOT / ".tools" / "conformance" / "bin" / "conformance"
BASELINE = CONFORMANCE_DIR / "baseline.json"

SERVER_START_TIMEOUT = 30.0
SUITE_TIMEOUT = 300.0  # a full run takes ~2 s here; this bounds a hung server
MAX_SESSIONS = 100  # the suite opens ~35 sessions and never deletes them

URL_LINE = re.compile(r"^CONFORMANCE_SERVER_URL=(\S+)\s*$")
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
SUITE_HEADER = re.compile(r"Running (?P<suite>\w+) suite \((?P<count>\d+) scenarios\)")


@dataclass(frozen=True)
class Target:
    """A way of serving the conformance fixture: a runner script and its arguments."""

    name: str
    runner: Path
    args: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, str(self.runner), "--port", "0", *self.args]


# Our adapter (supervisor.mcp.serve_http: one supervised session actor per MCP session)
# is the server under test; the SDK's own StreamableHTTPSessionManager serving the same
# fixture is kept as a reference case (it takes ~2 s).
SUPERVISOR_TARGET = Target(
    "supervisor",
    CONFORMANCE_DIR / "run_supervised_server.py",
    ("--max-sessions", str(MAX_SESSIONS)),
)
SDK_TARGET = Target(
    "sdk",
    CONFORMANCE_DIR / "run_sdk_server.py",
    ("--max-sessions", str(MAX_SESSIONS)),
)
TARGETS = [SUPERVISOR_TARGET, SDK_TARGET]


@dataclass
class ScenarioResult:
    name: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    missing: bool = False

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c.get("status") == "FAILURE"]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.failures

    def describe_failures(self) -> str:
        if self.missing:
            return f"{self.name}: no checks.json written"
        lines = [f"{self.name}:"]
        for check in self.failures:
            lines.append(f"    {check.get('id')}: {check.get('errorMessage', '(no message)')}")
        return "\n".join(lines)


@dataclass
class SuiteRun:
    suite: str
    returncode: int
    output: str
    results: dict[str, ScenarioResult]
    announced: int | None

    def summary(self) -> str:
        passed = sum(r.passed for r in self.results.values())
        checks = sum(len(r.checks) for r in self.results.values())
        return (
            f"{self.suite} suite: {passed}/{len(self.results)} scenarios passed ({checks} checks)"
        )


def load_baseline(target: str) -> dict[str, str]:
    """Scenario -> reason, for the entries of ``baseline.json`` that apply to ``target``."""
    raw: dict[str, Any] = json.loads(BASELINE.read_text())
    baseline: dict[str, str] = {}
    for scenario, entry in raw.items():
        if isinstance(entry, str):
            baseline[scenario] = entry
        elif isinstance(entry, dict):
            targets = entry.get("targets")
            if targets is None or target in targets:
                baseline[scenario] = str(entry.get("reason", ""))
        else:
            raise ValueError(f"baseline.json: bad entry for {scenario!r}: {entry!r}")
    return baseline


@pytest.fixture
def conformance_suite() -> Path:
    """The installed suite's launcher; skips (or, under CI, fails) when it is not installed."""
    if SUITE.is_file() and os.access(SUITE, os.X_OK):
        return SUITE
    message = (
        f"MCP conformance suite not installed ({SUITE.relative_to(ROOT)} is missing): "
        "run `bash scripts/setup-conformance.sh`"
    )
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so a missing install is an error)")
    pytest.skip(message)


def read_results(output_dir: Path) -> dict[str, ScenarioResult]:
    results: dict[str, ScenarioResult] = {}
    for entry in sorted(output_dir.iterdir()):
        match = RESULT_DIR.match(entry.name)
        if not entry.is_dir() or match is None:
            continue
        name = match["scenario"]
        checks_file = entry / "checks.json"
        if checks_file.is_file():
            results[name] = ScenarioResult(name, json.loads(checks_file.read_text()))
        else:
            results[name] = ScenarioResult(name, missing=True)
    return results


async def run_suite(suite: Path, url: str, which: str, output_dir: Path) -> SuiteRun:
    await trio.Path(output_dir).mkdir(parents=True)
    with trio.fail_after(SUITE_TIMEOUT):
        completed = await trio.run_process(
            [str(suite), "server", "--url", url, "--suite", which, "-o", str(output_dir)],
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
            cwd=output_dir,
        )
    output = completed.stdout.decode(errors="replace")
    header = SUITE_HEADER.search(output)
    return SuiteRun(
        suite=which,
        returncode=completed.returncode,
        output=output,
        results=read_results(output_dir),
        announced=int(header["count"]) if header else None,
    )


async def read_server_url(stream: trio.abc.ReceiveStream, log: Path) -> str:
    """The URL the runner prints once it listens (``CONFORMANCE_SERVER_URL=...``)."""
    buffer = b""
    with trio.move_on_after(SERVER_START_TIMEOUT):
        while True:
            chunk = await stream.receive_some()
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                match = URL_LINE.match(line)
                if match:
                    return match[1]
    pytest.fail(
        f"server runner did not report its URL within {SERVER_START_TIMEOUT:.0f}s; "
        f"stdout: {buffer!r}\nstderr (tail):\n{tail(log)}"
    )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.mark.conformance
@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
async def test_conformance_suite(target: Target, conformance_suite: Path, tmp_path: Path) -> None:
    suite = conformance_suite
    baseline = load_baseline(target.name)
    server_log = tmp_path / "server.log"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )

    with server_log.open("wb") as log_file:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    target.command(),
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    check=False,
                    cwd=ROOT,
                    env=env,
                )
            )
            assert process.stdout is not None
            url = await read_server_url(process.stdout, server_log)
            active = await run_suite(suite, url, "active", tmp_path / "active")
            pending = await run_suite(suite, url, "pending", tmp_path / "pending")
            server_exit = process.returncode
            nursery.cancel_scope.cancel()  # terminates the runner (SIGTERM, then SIGKILL)

    print(f"\nconformance[{target.name}] {url}: {active.summary()}; {pending.summary()}")
    for result in pending.results.values():
        if not result.passed:
            print("  pending (informative) " + result.describe_failures())

    context = f"\n--- suite output (tail) ---\n{active.output[-3000:]}\n--- server log (tail) ---\n"
    assert server_exit is None, (
        f"server runner exited early ({server_exit})" + context + tail(server_log)
    )
    assert active.results, "the suite produced no results" + context + tail(server_log)
    if active.announced is not None:
        assert len(active.results) == active.announced, (
            f"suite announced {active.announced} scenarios but wrote {len(active.results)} results"
        )

    unexpected = [r for name, r in active.results.items() if not r.passed and name not in baseline]
    stale = sorted(name for name, r in active.results.items() if r.passed and name in baseline)
    problems: list[str] = []
    if unexpected:
        problems.append(
            "scenarios failing (not in tests/conformance/baseline.json):\n"
            + "\n".join("  " + r.describe_failures() for r in unexpected)
        )
    if stale:
        problems.append(
            "stale baseline entries (these pass now; remove them from baseline.json): "
            + ", ".join(stale)
        )
    assert not problems, "\n".join(problems) + context + tail(server_log)
    if not baseline:
        assert active.returncode == 0, (
            f"suite exited {active.returncode} although every scenario passed" + context
        )
